//! The official Retell Python SDK against the real binary: `tests/sdk/test_sdk.py` must
//! pass unchanged but for `base_url`. Needs `python3` with the SDK installed
//! (`pip install -r tests/sdk/requirements.txt`); without it the test fails and says so.
//! The server runs at `RUST_LOG=trace` and the test checks that the trunk password the
//! script imports never appears in its log.

mod harness;

use std::process::Command;

use harness::server::{Server, API_KEY};

#[test]
fn official_retell_sdk_drives_the_api() {
    let probe = Command::new("python3")
        .args(["-c", "import retell; print(retell.__version__)"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {
            eprintln!("retell-sdk {}", String::from_utf8_lossy(&out.stdout).trim());
        }
        _ => panic!(
            "python3 with the Retell SDK is needed: pip install -r tests/sdk/requirements.txt"
        ),
    }
    // TRACE, so the check below covers every log line the binary can write.
    let server = Server::builder()
        .env("DIALTONE__LOG__FILTER", "trace")
        .start();
    let trunk_password = format!("trunk-pw-{}", std::process::id());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/test_sdk.py");
    let out = Command::new("python3")
        .arg(script)
        .env("DIALTONE_BASE_URL", server.base_url())
        .env("DIALTONE_API_KEY", API_KEY)
        .env("DIALTONE_TEST_TRUNK_PASSWORD", &trunk_password)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "SDK script failed");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    assert!(server.db_path().exists(), "the database file was created");
    let log = server.log();
    assert!(
        log.contains("phone number imported"),
        "the TRACE log was captured"
    );
    assert!(
        !log.contains(&trunk_password),
        "the trunk password is in the server log"
    );
}
