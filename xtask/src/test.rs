//! `cargo xtask test`: the layout check, clippy, then every unit test and the end-to-end suite, then honest counts.
//!
//! Both `cargo test` runs stream their output to the terminal as it comes; their stdout (where
//! libtest writes) is also parsed as it passes: the `test result:` lines give the counts, and
//! the skip markers that `portico_tests::skip` / `skip_part` print turn a "passed" test into a
//! skipped one (or note the part it skipped). The last line printed is
//! `N passed, M failed, K skipped`.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, bail};

use crate::process::run;
use crate::{compile, setup};

pub fn test(root: &Path) -> anyhow::Result<()> {
    setup::setup(setup::TEST_PACKAGES)?;
    let venv = setup::setup_venv(root, setup::TEST_PY)?;
    // The module graph and file sizes: instant, and the first thing a refactor breaks.
    crate::layout::check(root)?;
    // Lints first: the quickest failure. `--release`, like the build and the tests, so the
    // proc-macros and build-script runs (lb-userspace's builds the eBPF objects) are shared
    // with them instead of being built a second time for the dev profile. lb-ebpf only builds
    // for the BPF target (nightly features), so it is left out as in `default-members`.
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems (fix them, or `#[expect(lint, reason = \"...\")]`)")?;
    compile::build()?;
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    // Unit tests of every host crate (lb-ebpf only builds for the BPF target).
    let mut unit = Command::new("cargo");
    unit.args([
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "lb-common",
        "-p",
        "lb-userspace",
        "-p",
        "wsgi-worker",
        "-p",
        "xtask",
    ]);
    // End-to-end tests start many servers under load: one at a time on small machines, with
    // output shown (--nocapture) so the skip markers reach the parser next to their test.
    let mut e2e = Command::new("cargo");
    e2e.env("PORTICO_TEST_VENV", &venv).args([
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "portico-tests",
        "--",
        "--test-threads=1",
        "--nocapture",
    ]);
    for cmd in [&mut unit, &mut e2e] {
        let st = tee(cmd, &mut tally)?;
        if !st.success() {
            failures.push(format!("{cmd:?} failed: {st}"));
        }
    }
    print!("{}", tally.report());
    std::io::stdout().flush().context("writing the summary")?;
    if !failures.is_empty() || tally.failed() > 0 {
        bail!("tests failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// Runs `cmd` with its stdout piped through this process: every byte is written to our stdout as
/// soon as it arrives (so a running test's name shows before it ends) and each complete line is
/// fed to `tally`. Stderr (cargo's progress, the tests' own logs) goes straight to the terminal.
fn tee(cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<ExitStatus> {
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut pipe = child.stdout.take().context("child stdout was not piped")?;
    let mut out = std::io::stdout();
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading the output of {cmd:?}")),
        };
        let mut lock = out.lock();
        lock.write_all(&buf[..n])
            .and_then(|()| lock.flush())
            .context("writing test output")?;
        for &b in &buf[..n] {
            if b == b'\n' {
                tally.line(&String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        tally.line(&String::from_utf8_lossy(&line));
    }
    let st = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    tally.end_of_run();
    out.flush().context("writing test output")?;
    Ok(st)
}

/// A skip marker: `SKIP <test>: <reason>` (the whole test skipped) or
/// `SKIP-PART <test> (<part>): <reason>` (the test ran; one part of it did not).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Skip {
    test: String,
    part: Option<String>,
    reason: String,
}

impl Skip {
    fn parse(line: &str) -> Option<Skip> {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("SKIP-PART ") {
            let (test, rest) = rest.split_once(" (")?;
            let (part, reason) = rest.split_once("): ")?;
            return Some(Skip {
                test: test.trim().to_string(),
                part: Some(part.to_string()),
                reason: reason.trim().to_string(),
            });
        }
        let rest = line.strip_prefix("SKIP ")?;
        let (test, reason) = rest.split_once(": ")?;
        if test.is_empty() || test.contains(char::is_whitespace) {
            return None;
        }
        Some(Skip {
            test: test.to_string(),
            part: None,
            reason: reason.trim().to_string(),
        })
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.part {
            Some(part) => write!(f, "SKIP-PART {} ({part}): {}", self.test, self.reason),
            None => write!(f, "SKIP {}: {}", self.test, self.reason),
        }
    }
}

/// How one test ended, as libtest prints it after `test <name> ... `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Ignored,
}

fn outcome(s: &str) -> Option<Outcome> {
    match s.trim() {
        "ok" => Some(Outcome::Ok),
        "FAILED" => Some(Outcome::Failed),
        s if s == "ignored" || s.starts_with("ignored, ") => Some(Outcome::Ignored),
        _ => None,
    }
}

/// The counts of one or more `cargo test` runs, from libtest's stdout (single-threaded with
/// `--nocapture` where skip markers matter: a test's output then sits between its
/// `test <name> ... ` and its outcome, so each marker belongs to the test running at the time).
#[derive(Debug, Default)]
struct Tally {
    /// Sums of the `test result:` lines.
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Tests that started and never ended (their test binary crashed).
    crashed: Vec<String>,
    /// Tests that passed after a whole-test skip marker: counted as skipped, not passed.
    skipped: Vec<Skip>,
    /// Parts skipped by tests that otherwise ran (the test still counts by its outcome).
    parts: Vec<Skip>,
    /// Markers naming another test than the one running (or printed outside any test).
    stray: Vec<(Option<String>, Skip)>,
    /// The test running now and the markers it printed so far.
    current: Option<String>,
    pending: Vec<Skip>,
}

impl Tally {
    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            // The binary went on to its result: an outcome not found (glued to output that
            // did not end its line) is in these counts anyway.
            self.forget_current();
            self.add_result(rest);
        } else if let Some((name, after)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            // `test <name> ... ok` (whole result), or a start followed on the same line by the
            // test's first output (single-threaded --nocapture).
            self.forget_current();
            self.current = Some(name.to_string());
            self.body(after);
        } else if is_running_line(line) {
            self.abandon_current();
        } else {
            self.body(line);
        }
    }

    /// A line of output (or the end of a start line) while a test may be running.
    fn body(&mut self, text: &str) {
        if self.current.is_some()
            && let Some(o) = outcome(text)
        {
            self.finish(o);
            return;
        }
        let Some(skip) = Skip::parse(text) else {
            return;
        };
        match &self.current {
            Some(name) if names_match(name, &skip.test) => self.pending.push(skip),
            running => self.stray.push((running.clone(), skip)),
        }
    }

    fn finish(&mut self, o: Outcome) {
        self.current = None;
        let (whole, parts): (Vec<Skip>, Vec<Skip>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|s| s.part.is_none());
        self.parts.extend(parts);
        if o == Outcome::Ok
            && let Some(first) = whole.into_iter().next()
        {
            self.skipped.push(first);
        }
    }

    fn forget_current(&mut self) {
        self.current = None;
        self.pending.clear();
    }

    /// A test that started but printed no outcome before its binary ended (a new binary
    /// starts, or the run ends): the binary crashed under it.
    fn abandon_current(&mut self) {
        if let Some(name) = self.current.take() {
            self.crashed.push(name);
            self.pending.clear();
        }
    }

    /// `ok. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s`
    fn add_result(&mut self, rest: &str) {
        let counts = rest.split_once(". ").map_or(rest, |(_, c)| c);
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }

    /// The end of one `cargo test` run.
    fn end_of_run(&mut self) {
        self.abandon_current();
    }

    fn failed(&self) -> u64 {
        self.failed + self.crashed.len() as u64
    }

    fn skipped(&self) -> u64 {
        self.skipped.len() as u64
    }

    fn passed(&self) -> u64 {
        self.passed.saturating_sub(self.skipped())
    }

    /// The summary: skipped tests and parts with their reasons, then the counts line.
    fn report(&self) -> String {
        let mut s = String::from("\n==================== summary\n");
        if !self.skipped.is_empty() {
            s.push_str("skipped tests:\n");
            for k in &self.skipped {
                s.push_str(&format!("  {}: {}\n", k.test, k.reason));
            }
        }
        if !self.parts.is_empty() {
            s.push_str("skipped parts (the rest of the test ran and counts):\n");
            for k in &self.parts {
                let part = k.part.as_deref().unwrap_or_default();
                s.push_str(&format!("  {} ({part}): {}\n", k.test, k.reason));
            }
        }
        for (running, k) in &self.stray {
            let running = running.as_deref().unwrap_or("no test");
            s.push_str(&format!(
                "warning: skip marker printed while {running} was running, not counted: {k}\n"
            ));
        }
        for name in &self.crashed {
            s.push_str(&format!("crashed (counted as failed): {name}\n"));
        }
        if self.ignored > 0 {
            s.push_str(&format!("{} ignored (#[ignore])\n", self.ignored));
        }
        s.push_str(&format!(
            "{} passed, {} failed, {} skipped\n",
            self.passed(),
            self.failed(),
            self.skipped()
        ));
        s
    }
}

/// `running 3 tests`: a test binary starts.
fn is_running_line(line: &str) -> bool {
    line.strip_prefix("running ")
        .and_then(|rest| rest.split_once(' '))
        .is_some_and(|(n, what)| n.parse::<u64>().is_ok() && (what == "test" || what == "tests"))
}

/// libtest names a test by its path in the test crate (`module::name`); markers name the
/// function, or the full path.
fn names_match(running: &str, marker: &str) -> bool {
    running == marker
        || running
            .strip_suffix(marker)
            .is_some_and(|head| head.ends_with("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(text: &str) -> Tally {
        let mut t = Tally::default();
        for l in text.lines() {
            t.line(l);
        }
        t.end_of_run();
        t
    }

    fn last_line(t: &Tally) -> String {
        t.report().lines().last().unwrap().to_string()
    }

    #[test]
    fn markers_parse() {
        assert_eq!(
            Skip::parse("SKIP killing_a_cell: needs root (CAP_BPF): really"),
            Some(Skip {
                test: "killing_a_cell".into(),
                part: None,
                reason: "needs root (CAP_BPF): really".into()
            })
        );
        assert_eq!(
            Skip::parse("SKIP-PART status_page (browser part): chromium not installed"),
            Some(Skip {
                test: "status_page".into(),
                part: Some("browser part".into()),
                reason: "chromium not installed".into()
            })
        );
        assert_eq!(Skip::parse("SKIPPED nothing: x"), None);
        assert_eq!(Skip::parse("SKIP two words: x"), None);
        assert_eq!(Skip::parse("a SKIP b: c"), None);
        let s = Skip::parse("SKIP-PART t (p): r").unwrap();
        assert_eq!(Skip::parse(&s.to_string()), Some(s));
    }

    #[test]
    fn counts_come_from_the_result_lines() {
        let t = tally(
            "running 3 tests\n\
             test a ... ok\n\
             test b ... FAILED\n\
             test c ... ignored\n\
             \n\
             test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
             running 2 tests\n\
             test m::d ... ok\n\
             test m::e ... ok\n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n",
        );
        assert_eq!(
            (t.passed(), t.failed(), t.skipped(), t.ignored),
            (3, 1, 0, 1)
        );
        assert_eq!(last_line(&t), "3 passed, 1 failed, 0 skipped");
    }

    #[test]
    fn a_skipped_test_counts_as_skipped_not_passed() {
        // --test-threads=1 --nocapture: output follows `test name ... ` on the same line.
        let t = tally(
            "running 3 tests\n\
             test steering_spreads ... SKIP steering_spreads: needs root\n\
             ok\n\
             test fallback ... \n\
             some output\n\
             SKIP fallback: needs root to drop capabilities from\n\
             ok\n\
             test plain ... ok\n\
             test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n",
        );
        assert_eq!((t.passed(), t.failed(), t.skipped()), (1, 0, 2));
        let r = t.report();
        assert!(r.contains("  steering_spreads: needs root\n"), "{r}");
        assert!(
            r.contains("  fallback: needs root to drop capabilities from\n"),
            "{r}"
        );
        assert_eq!(last_line(&t), "1 passed, 0 failed, 2 skipped");
    }

    #[test]
    fn a_partial_skip_still_passes_and_is_reported() {
        let t = tally(
            "running 1 test\n\
             test status_page ... SKIP-PART status_page (browser part): chromium not installed\n\
             ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.00s\n",
        );
        assert_eq!((t.passed(), t.failed(), t.skipped()), (1, 0, 0));
        assert!(
            t.report()
                .contains("  status_page (browser part): chromium not installed\n")
        );
    }

    #[test]
    fn a_test_that_fails_after_its_skip_line_counts_as_failed() {
        let t = tally(
            "running 1 test\n\
             test t ... SKIP t: reason\n\
             FAILED\n\
             test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
        );
        assert_eq!((t.passed(), t.failed(), t.skipped()), (0, 1, 0));
    }

    #[test]
    fn markers_of_another_test_are_not_counted_but_reported() {
        let t = tally(
            "running 1 test\n\
             test real_name ... SKIP other_name: reason\n\
             ok\n\
             SKIP nobody: reason\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
        );
        assert_eq!((t.passed(), t.skipped()), (1, 0));
        assert_eq!(t.stray.len(), 2);
        assert!(t.report().contains("while real_name was running"));
        assert!(t.report().contains("while no test was running"));
    }

    #[test]
    fn module_paths_match_function_names() {
        let t = tally(
            "test net::steering ... SKIP steering: x\nok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
        );
        assert_eq!(t.skipped(), 1);
        assert!(names_match("a::b", "a::b"));
        assert!(!names_match("a::xb", "b"));
    }

    #[test]
    fn a_crashed_test_binary_counts_its_running_test_as_failed() {
        // The binary aborted mid-test: no outcome, no result line; cargo goes on (no-fail-fast).
        let t = tally(
            "running 2 tests\n\
             test a ... ok\n\
             test b ... \n\
             running 1 test\n\
             test c ... ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
        );
        assert_eq!(t.crashed, vec!["b".to_string()]);
        assert!(is_running_line("running 1 test"));
        assert!(!is_running_line("running load for 3 s"));
        assert_eq!(last_line(&t), "1 passed, 1 failed, 0 skipped");
    }

    #[test]
    fn an_outcome_glued_to_output_is_not_a_crash() {
        let t = tally(
            "running 2 tests\n\
             test a ... progress...ok\n\
             test b ... ok\n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
        );
        assert!(t.crashed.is_empty());
        assert_eq!(last_line(&t), "2 passed, 0 failed, 0 skipped");
    }

    #[test]
    fn doc_test_names_with_spaces() {
        let t = tally(
            "running 1 test\n\
             test lb-common/src/lib.rs - Thing (line 12) ... ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.20s\n",
        );
        assert_eq!(last_line(&t), "1 passed, 0 failed, 0 skipped");
        assert!(t.crashed.is_empty());
    }
}
