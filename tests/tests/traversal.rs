//! Not one byte from outside the root, whatever the encoding.
use portico_tests::*;

#[test]
fn traversal_attempts_never_succeed() {
    let s = Site::new();
    s.file("secret.txt", b"TOP SECRET");
    s.file("www/pub/ok.txt", b"public");
    s.file("www/.hidden", b"hidden");
    std::os::unix::fs::symlink(s.path().join("secret.txt"), s.path().join("www/pub/link")).unwrap();
    std::os::unix::fs::symlink(s.path(), s.path().join("www/pub/dirlink")).unwrap();
    let p = Portico::start(&[
        "--static",
        &format!("/files/={}", s.root("www/pub")),
        "--workers",
        "1",
    ]);
    let attempts = [
        "/files/../secret.txt",
        "/files/../../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E/secret.txt",
        "/files/.%2e/secret.txt",
        "/files/%2e./secret.txt",
        "/files/..%2fsecret.txt",
        "/files/..%2Fsecret.txt",
        "/files/%2e%2e%2fsecret.txt",
        "/files/%2e%2e%5csecret.txt",
        "/files/..%5csecret.txt",
        "/files/..\\secret.txt",
        "/files/ok.txt%00.png",
        "/files/%00",
        "/files/%252e%252e/secret.txt",
        "/files/%c0%ae%c0%ae/secret.txt",
        "/files/%uff0e%uff0e/secret.txt",
        "/files/./../secret.txt",
        "/files//../secret.txt",
        "/files/ok.txt/../../secret.txt",
        "/files/link",
        "/files/dirlink/secret.txt",
        "/files/../.hidden",
        "/files/%2e%2e/.hidden",
        "/files/....//secret.txt",
        "/files/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/files/..;/secret.txt",
        "/files/%5c..%5csecret.txt",
    ];
    assert!(attempts.len() >= 20);
    for path in attempts {
        let r = raw(
            p.addr,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        // An error is fine too: hyper may refuse the request line outright (closing with no
        // response).
        if let Ok(r) = r {
            assert!(
                matches!(r.status, 400 | 404),
                "{path}: got {} ({})",
                r.status,
                r.text()
            );
            assert!(
                !r.text().contains("TOP SECRET") && !r.text().contains("hidden"),
                "{path} leaked"
            );
        }
    }
    assert_eq!(get(p.addr, "/files/ok.txt").unwrap().body, b"public");
}
