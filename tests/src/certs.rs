//! Test certificates: a CA and leaves it signs (ECDSA P-256 or RSA 2048, any names, any
//! validity), written as PEM by Python's `cryptography` from the test venv.
use std::path::{Path, PathBuf};
use std::process::Command;

/// A leaf certificate and key on disk, signed by `Ca`.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA whose certificate clients trust (`curl --cacert`, `requests` verify=).
#[derive(Debug)]
pub struct Ca {
    pub cert: PathBuf,
    key: PathBuf,
    venv: PathBuf,
    dir: PathBuf,
}

/// Key kinds of a leaf.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Ecdsa,
    Rsa,
}

const SCRIPT: &str = r#"
import datetime, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

mode, out_cert, out_key, kind, days_from, days_to, ca_cert, ca_key, *names = sys.argv[1:]
key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
now = datetime.datetime.now(datetime.timezone.utc)
subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "Portico test CA")])
b = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
     .serial_number(x509.random_serial_number())
     .not_valid_before(now + datetime.timedelta(days=int(days_from)))
     .not_valid_after(now + datetime.timedelta(days=int(days_to))))
if mode == "ca":
    b = b.issuer_name(subject).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    signer = key
else:
    ca = x509.load_pem_x509_certificate(open(ca_cert, "rb").read())
    signer = serialization.load_pem_private_key(open(ca_key, "rb").read(), None)
    b = (b.issuer_name(ca.subject)
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
cert = b.sign(signer, hashes.SHA256())
open(out_cert, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(out_key, "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"#;

impl Ca {
    /// A new CA in `dir`, made with the venv's Python.
    pub fn new(venv: &Path, dir: &Path) -> Ca {
        let ca = Ca {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            venv: venv.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        ca.run(&[
            "ca",
            path(&ca.cert),
            path(&ca.key),
            "ec",
            "-1",
            "30",
            "-",
            "-",
        ]);
        ca
    }

    /// A leaf for `names` valid from `from_days` to `to_days` (relative to now), named `file`.
    pub fn leaf(
        &self,
        file: &str,
        kind: Kind,
        names: &[&str],
        from_days: i32,
        to_days: i32,
    ) -> Leaf {
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        let kind = match kind {
            Kind::Ecdsa => "ec",
            Kind::Rsa => "rsa",
        };
        let (from, to) = (from_days.to_string(), to_days.to_string());
        let mut args = vec![
            "leaf",
            path(&leaf.cert),
            path(&leaf.key),
            kind,
            &from,
            &to,
            path(&self.cert),
            path(&self.key),
        ];
        args.extend_from_slice(names);
        self.run(&args);
        leaf
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(self.venv.join("bin/python"))
            .arg("-c")
            .arg(SCRIPT)
            .args(args)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "making a certificate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}
