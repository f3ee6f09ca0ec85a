//! PyMongo, a second real driver, against mongo-sim: it starts with the
//! legacy OP_QUERY handshake and has its own cursor and change-stream code.
//!
//! The Python comes from `MONGO_SIM_PYTHON` (a python with pymongo installed)
//! or from a virtualenv this test creates at `target/pyenv-mongo-sim`. If
//! neither works the test fails: a missing PyMongo must not pass silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mongo_sim::{MongoSim, SimOptions};

fn has_pymongo(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import pymongo"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(command: &mut Command, what: &str) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// A python with pymongo: `MONGO_SIM_PYTHON`, or a virtualenv under target/.
fn python_with_pymongo() -> PathBuf {
    if let Some(python) = std::env::var_os("MONGO_SIM_PYTHON") {
        let python = PathBuf::from(python);
        assert!(
            has_pymongo(&python),
            "MONGO_SIM_PYTHON={} cannot import pymongo",
            python.display()
        );
        return python;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let venv = target.join("pyenv-mongo-sim");
    let python = venv.join("bin/python");
    if has_pymongo(&python) {
        return python;
    }
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", "pymongo"]),
        "pip install pymongo",
    );
    assert!(
        has_pymongo(&python),
        "pymongo still not importable after pip install"
    );
    python
}

#[test]
fn pymongo_writes_tails_and_watches() {
    let python = python_with_pymongo();
    let sim = MongoSim::start(SimOptions::default()).expect("start mongo-sim");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/pymongo_smoke.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(sim.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the PyMongo script");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the PyMongo script did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .expect("read stdout");
    assert!(
        status.success(),
        "PyMongo script failed ({status}); stdout: {stdout}"
    );
    assert!(stdout.contains("pymongo ok"), "stdout: {stdout}");
    let counters = sim.counters().snapshot();
    assert!(counters.command("isMaster") + counters.command("hello") >= 1);
    assert!(counters.oplog_tail.documents >= 3, "{counters:?}");
    assert!(counters.change_stream.documents >= 3, "{counters:?}");
}
