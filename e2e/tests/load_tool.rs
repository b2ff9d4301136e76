//! `postern-load` as scripts and people run it: a progress line on stderr while the load runs,
//! none with `--quiet`, and the report on stdout either way. The target is a scripted MX whose
//! greeting trickles out, so the load lasts a few seconds.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::Duration;

use postern_e2e::MockMx;
use postern_e2e::mx::Behaviour;

/// Runs `postern-load` against `mx` with `extra` flags: `(stdout, stderr)`.
async fn load(mx: &MockMx, extra: &[&str]) -> (String, String) {
    let target = mx.addr.to_string();
    let mut args = vec![
        "--target",
        target.as_str(),
        "--messages",
        "4",
        "--sessions",
        "2",
        "--size",
        "1024",
    ];
    args.extend_from_slice(extra);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_postern-load"))
        .args(&args)
        .output()
        .await
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert!(output.status.success(), "{}", text(&output.stderr));
    (text(&output.stdout), text(&output.stderr))
}

#[tokio::test]
async fn progress_goes_to_stderr_while_the_load_runs_and_quiet_turns_it_off() {
    let mx = MockMx::behaving(Behaviour {
        trickle_greeting: Some(Duration::from_millis(80)),
        ..Behaviour::default()
    })
    .await;
    let (stdout, stderr) = load(&mx, &[]).await;
    assert!(stdout.contains("accepted         4 of 4"), "{stdout}");
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with("sent ")).collect();
    assert!(!progress.is_empty(), "no progress line: {stderr:?}");
    for line in &progress {
        assert!(
            line.contains("/4 · accepted ")
                && line.contains(" · refused ")
                && line.contains(" msg/s · "),
            "{line}"
        );
    }
    assert!(
        !stdout.contains("sent "),
        "progress stays off stdout: {stdout}"
    );

    let (stdout, stderr) = load(&mx, &["--quiet"]).await;
    assert!(stdout.contains("accepted         4 of 4"), "{stdout}");
    assert!(stderr.trim().is_empty(), "--quiet printed {stderr:?}");
    assert_eq!(mx.delivered().len(), 8);
}
