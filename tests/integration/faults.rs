//! Faults injected into `coppice import`: a hanging tool, a signal in the middle of a
//! step, a full disk. Fake CLIs only wrap the real ones to add the fault, and reach
//! the import through the `--buildah` and `--rsync` flags, never through PATH.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    TemplateGuard, buildah_containers, coppice_bin, dataset_exists, destroy_dataset, run, run_ok, test_env, unique_name,
};

/// Writes an executable shell script.
fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Writes a buildah whose `pull` hangs and ignores SIGTERM. Every other subcommand runs the real one.
fn hanging_pull_buildah(dir: &Path) -> PathBuf {
    let real = which("buildah");
    write_script(
        dir,
        "buildah",
        &format!("if [ \"$1\" = pull ]; then trap '' TERM; echo 'pull hangs' >&2; sleep 300; exit 0; fi\nexec {real} \"$@\""),
    )
}

/// Writes an rsync limited to 2 MB/s, so that the copy of the sample image takes many seconds.
fn slow_rsync(dir: &Path) -> PathBuf {
    let real = which("rsync");
    write_script(dir, "rsync", &format!("exec {real} --bwlimit=2000 \"$@\""))
}

fn which(program: &str) -> String {
    run_ok("sh", &["-c", &format!("command -v {program}")]).trim().to_owned()
}

/// A running `coppice import` whose output lines are read as they arrive.
struct LiveImport {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl LiveImport {
    fn start(extra: &[&str], name: &str, from: &str) -> Self {
        let mut child = Command::new(coppice_bin())
            .args(extra)
            .args(["import", name, from])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start coppice");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, seen: std::cell::RefCell::new(Vec::new()) }
    }

    /// Waits for a line containing `needle`, failing the test after `limit`.
    fn wait_for(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.borrow_mut().push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no output line containing {needle:?} within {limit:?}");
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the exit and returns the status code, stderr and every stdout line.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String, Vec<String>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                let mut lines = self.seen.take();
                lines.extend(self.lines.try_iter());
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    lines.push(line);
                }
                return (status.code(), stderr, lines);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("coppice did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LiveImport {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Finds the working container in the `$ buildah from ... --name NAME` line.
fn container_of(lines: &[String]) -> Option<String> {
    let line = lines.iter().find(|line| line.contains("$ buildah from"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|word| *word == "--name")?;
    words.get(at + 1).map(|word| (*word).to_owned())
}

#[test]
fn hanging_pull_is_killed_at_its_timeout() {
    let env = test_env();
    let dir = tempfile::tempdir().unwrap();
    let buildah = hanging_pull_buildah(dir.path());
    let name = unique_name("it-hang");
    let guard = TemplateGuard::new(&env, &name);
    let started = Instant::now();

    let import = LiveImport::start(
        &["--buildah", buildah.to_str().unwrap(), "--pull-timeout", "2", "--kill-grace", "1"],
        &name,
        &format!("oci:{}", env.image),
    );
    let (code, stderr, _lines) = import.finish(Duration::from_secs(30));

    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("step pull timed out after 2 s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert!(!dataset_exists(&guard.dataset));
}

#[test]
fn sigterm_during_pull_cancels_and_exits_nonzero() {
    let env = test_env();
    let dir = tempfile::tempdir().unwrap();
    let real = which("buildah");
    let buildah = write_script(
        dir.path(),
        "buildah",
        &format!("if [ \"$1\" = pull ]; then echo 'pull waits' >&2; sleep 300; exit 0; fi\nexec {real} \"$@\""),
    );
    let name = unique_name("it-term");
    let guard = TemplateGuard::new(&env, &name);
    let import = LiveImport::start(&["--buildah", buildah.to_str().unwrap()], &name, &format!("oci:{}", env.image));
    import.wait_for("$ ", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));

    import.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, stderr, _lines) = import.finish(Duration::from_secs(30));

    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("import cancelled during step pull"), "{stderr}");
    assert!(!dataset_exists(&guard.dataset));
}

#[test]
fn sigint_during_rsync_cleans_up() {
    let env = test_env();
    let dir = tempfile::tempdir().unwrap();
    let rsync = slow_rsync(dir.path());
    let name = unique_name("it-int");
    let guard = TemplateGuard::new(&env, &name);
    let from = format!("oci:{}", env.image);
    let import = LiveImport::start(&["--rsync", rsync.to_str().unwrap()], &name, &from);
    import.wait_for("rsync stderr | $ ", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));

    import.signal(nix::sys::signal::Signal::SIGINT);
    let (code, stderr, lines) = import.finish(Duration::from_secs(60));

    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("import cancelled during step rsync"), "{stderr}");
    assert!(!dataset_exists(&guard.dataset), "the cancelled import left its dataset");
    let container = container_of(&lines).expect("no buildah from line");
    assert!(!buildah_containers().contains(&container), "container {container} was left behind");
    let retry = run(coppice_bin(), &["import", &name, &from]);
    assert!(retry.status.success(), "{}", crate::support::describe(&coppice_bin(), &["import", &name, &from], &retry));
    assert!(dataset_exists(&format!("{}@base", guard.dataset)));
}

#[test]
fn full_disk_fails_rsync_and_frees_the_space() {
    let env = test_env();
    let jails = format!("{}/{}", env.jails, unique_name("it-quota"));
    run_ok("zfs", &["create", "-o", "quota=24M", &jails]);
    let _jails_guard = DatasetDropGuard(jails.clone());
    let used_before = used_bytes(&jails);

    let name = unique_name("it-full");
    let output = run(coppice_bin(), &["--jails-dataset", &jails, "import", &name, &format!("oci:{}", env.image)]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("step rsync failed"), "{stderr}");
    assert!(stderr.contains("Disk quota exceeded") || stderr.contains("No space left"), "{stderr}");
    assert!(!dataset_exists(&format!("{jails}/{name}-template")), "the failed dataset was left");
    let used_after = wait_for_used_below(&jails, used_before + 1024 * 1024);
    assert!(used_after <= used_before + 1024 * 1024, "space not freed: {used_before} -> {used_after} bytes");
}

fn used_bytes(dataset: &str) -> u64 {
    run_ok("zfs", &["get", "-Hp", "-o", "value", "used", dataset]).trim().parse().unwrap()
}

/// ZFS frees destroyed blocks asynchronously, so the used size shrinks over a few seconds.
fn wait_for_used_below(dataset: &str, limit: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let used = used_bytes(dataset);
        if used <= limit || Instant::now() > deadline {
            return used;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct DatasetDropGuard(String);

impl Drop for DatasetDropGuard {
    fn drop(&mut self) {
        destroy_dataset(&self.0);
    }
}
