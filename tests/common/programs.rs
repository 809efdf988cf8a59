//! External programs that some tests drive (a SOCKS5 proxy, Prometheus, a browser,
//! ElectrumX).
//!
//! Such a test is marked `#[ignore = "needs PROGRAM (how to install it); ..."]`, so a plain
//! `cargo test` lists it as ignored with that reason instead of passing without running it.
//! `cargo test -- --include-ignored` (the test command, which CI runs) runs it, and there a
//! missing program fails the test with a message that names the program and how to install
//! it.

use std::path::{Path, PathBuf};

/// The program `name` on `PATH`; fails the test, saying how to install it, when it is not
/// there.
#[track_caller]
pub fn program(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => path,
        None => missing(name, "on PATH", install),
    }
}

/// The program `name` at `path`, for one installed outside `PATH`; fails the test, saying how
/// to install it, when it is not there.
#[track_caller]
pub fn program_at(name: &str, path: &Path, install: &str) -> PathBuf {
    if path.is_file() {
        return path.to_path_buf();
    }
    missing(name, &format!("at {}", path.display()), install)
}

#[track_caller]
fn missing(name: &str, place: &str, install: &str) -> ! {
    panic!("this test needs {name}, which was not found {place}; install it: {install}")
}

/// HAProxy: on `PATH`, or in `/usr/sbin` where Debian installs it (not on every user's
/// `PATH`); fails the test when it is in neither.
#[track_caller]
pub fn haproxy() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("haproxy"))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(path) => path,
        None => program_at(
            "haproxy",
            Path::new("/usr/sbin/haproxy"),
            "apt-get install haproxy",
        ),
    }
}
