//! `coppice import` against the real buildah, rsync and zfs and the loopback registry.

use serde_json::Value;

use crate::support::{
    TemplateGuard, buildah_containers, coppice_bin, dataset_exists, describe, mountpoint, run, run_ok, test_env,
    unique_name,
};
use crate::tree::Tree;

/// An import run through the CLI with `--json`, its lines parsed.
struct ImportRun {
    output: std::process::Output,
    lines: Vec<Value>,
    /// The final `{"result": ...}` object, present after a success.
    result: Option<Value>,
    description: String,
}

impl ImportRun {
    fn start(name: &str, from: &str) -> Self {
        let args = ["import", "--json", name, from];
        let output = run(coppice_bin(), &args);
        let description = describe(&coppice_bin(), &args, &output);
        let mut lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout line {line:?} is not JSON ({e})\n{description}")))
            .collect();
        let result = lines.last().and_then(|line| line.get("result")).cloned();
        if result.is_some() {
            lines.pop();
        }
        Self { output, lines, result, description }
    }

    fn succeeded(&self) -> bool {
        self.output.status.success()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Returns the texts of the lines of one step.
    fn texts(&self, step: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter(|line| line["step"] == step)
            .map(|line| line["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Returns the working container, read from the `$ buildah from ... --name NAME` line.
    fn container(&self) -> Option<String> {
        self.texts("mount").iter().find(|text| text.starts_with("$ buildah from")).and_then(|text| {
            let words: Vec<&str> = text.split_whitespace().collect();
            let at = words.iter().position(|word| *word == "--name")?;
            words.get(at + 1).map(|word| (*word).to_owned())
        })
    }

    /// Returns the path `buildah mount` printed.
    fn mount_path(&self) -> Option<String> {
        self.lines
            .iter()
            .find(|line| line["step"] == "mount" && line["stream"] == "stdout" && line["text"].as_str().is_some_and(|t| t.starts_with('/')))
            .and_then(|line| line["text"].as_str().map(str::to_owned))
    }
}

fn assert_no_leftovers(run: &ImportRun) {
    let container = run.container().unwrap_or_else(|| panic!("no buildah from line\n{}", run.description));
    assert!(!buildah_containers().contains(&container), "container {container} was left behind");
    if let Some(path) = run.mount_path() {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(!mounts.contains(&path), "mount {path} was left behind");
    }
}

#[test]
fn import_matches_image_and_leaves_nothing() {
    let env = test_env();
    let name = unique_name("it-sample");
    let guard = TemplateGuard::new(&env, &name);

    let import = ImportRun::start(&name, &format!("oci:{}", env.image));

    assert!(import.succeeded(), "{}", import.description);
    let result = import.result.as_ref().unwrap_or_else(|| panic!("no result line\n{}", import.description));
    assert_eq!(result["snapshot"], format!("{}@base", guard.dataset));
    assert_eq!(result["template"], name.as_str());
    assert!(result["sizeBytes"].as_u64().unwrap() > 0, "{result}");
    assert!(dataset_exists(&format!("{}@base", guard.dataset)));
    assert_no_leftovers(&import);

    let image = crate::support::MountedImage::new(&env.image);
    let expected = Tree::read(&image.path);
    let actual = Tree::read(&mountpoint(&guard.dataset));
    assert!(expected.len() > 40, "the sample image looks empty: {} entries", expected.len());
    for awkward in ["usr/bin/passwd", "var/run/coppice.fifo", "var/db/sparse.img", "etc/motd copy", "usr/share/ünïcødé.txt", ".cshrc", "tmp", "var/empty"] {
        assert!(expected.contains(awkward), "the sample image lacks {awkward}");
    }
    let differences = expected.differences(&actual);
    assert!(differences.is_empty(), "template differs from the image:\n{}", differences.join("\n"));
}

#[test]
fn import_lines_are_tagged_in_order() {
    let env = test_env();
    let name = unique_name("it-lines");
    let _guard = TemplateGuard::new(&env, &name);

    let import = ImportRun::start(&name, &format!("oci:{}", env.image));

    assert!(import.succeeded(), "{}", import.description);
    let steps: Vec<&str> = import.lines.iter().map(|line| line["step"].as_str().unwrap()).collect();
    let mut order: Vec<&str> = steps.clone();
    order.dedup();
    assert_eq!(order, ["pull", "mount", "rsync", "snapshot", "reload", "cleanup"]);
    for (index, line) in import.lines.iter().enumerate() {
        assert_eq!(line["seq"].as_u64(), Some(index as u64 + 1));
        assert_eq!(line["source"], "template-build");
    }
    let stamps: Vec<&str> = import.lines.iter().map(|line| line["ts"].as_str().unwrap()).collect();
    assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]), "timestamps are not strictly increasing");
    assert!(import.texts("pull").iter().any(|text| text.starts_with("$ buildah pull --os freebsd docker://")));
    assert!(import.texts("rsync").iter().any(|text| text.starts_with("$ rsync -aHAX --numeric-ids --delete ")));
}

#[test]
fn templates_lists_the_import() {
    let env = test_env();
    let name = unique_name("it-list");
    let _guard = TemplateGuard::new(&env, &name);
    let import = ImportRun::start(&name, &format!("oci:{}", env.image));
    assert!(import.succeeded(), "{}", import.description);

    let listing: Value = serde_json::from_str(&run_ok(coppice_bin(), &["templates", "--json"])).unwrap();

    let template = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|template| template["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {listing}"));
    assert_eq!(template["snapshot"], format!("{}/{name}-template@base", env.jails));
    assert_eq!(template["from"], format!("oci:{}", env.image));
    assert!(template["sizeBytes"].as_u64().unwrap() > 0);
}

#[test]
fn second_import_rejected_before_pull() {
    let env = test_env();
    let name = unique_name("it-twice");
    let guard = TemplateGuard::new(&env, &name);
    let first = ImportRun::start(&name, &format!("oci:{}", env.image));
    assert!(first.succeeded(), "{}", first.description);

    let second = ImportRun::start(&name, &format!("oci:{}", env.image));

    assert!(!second.succeeded(), "{}", second.description);
    assert!(second.stderr().contains("already exists"), "{}", second.description);
    let commands: Vec<String> = second.lines.iter().filter_map(|line| line["text"].as_str()).filter(|t| t.starts_with("$ ")).map(str::to_owned).collect();
    assert_eq!(
        commands,
        [format!("$ zfs list -H -o name {}", env.jails), format!("$ zfs list -H -o name {}", guard.dataset)],
        "only the existence checks may run"
    );
    assert!(dataset_exists(&format!("{}@base", guard.dataset)), "the existing template was touched");
}

#[test]
fn missing_image_fails_in_pull_and_leaves_nothing() {
    let env = test_env();
    let name = unique_name("it-missing");
    let guard = TemplateGuard::new(&env, &name);

    let import = ImportRun::start(&name, &format!("oci:{}/coppice/no-such-image:1", env.registry));

    assert!(!import.succeeded(), "{}", import.description);
    let stderr = import.stderr();
    assert!(stderr.contains("step pull failed"), "{}", import.description);
    assert!(stderr.contains("buildah pull --os freebsd"), "{}", import.description);
    assert!(stderr.contains("exited with code"), "{}", import.description);
    assert!(!dataset_exists(&guard.dataset), "a dataset was left behind");
    assert!(import.texts("mount").is_empty(), "the import went on after the failed pull");
}

#[test]
fn xattr_image_fails_in_rsync_and_leaves_nothing() {
    let env = test_env();
    let name = unique_name("it-xattr");
    let guard = TemplateGuard::new(&env, &name);

    let import = ImportRun::start(&name, &format!("oci:{}", env.xattr_image));

    assert!(!import.succeeded(), "{}", import.description);
    let stderr = import.stderr();
    assert!(stderr.contains("step rsync failed"), "{}", import.description);
    assert!(stderr.contains("exited with code 23"), "{}", import.description);
    assert!(stderr.contains("rsync"), "{}", import.description);
    assert!(!dataset_exists(&guard.dataset), "the failed dataset was not destroyed");
    assert!(import.texts("cleanup").iter().any(|text| text.starts_with("$ zfs destroy -r")));
    assert_no_leftovers(&import);
}

#[test]
fn dataset_made_by_hand_is_left_untouched() {
    let env = test_env();
    let name = unique_name("it-hand");
    let guard = TemplateGuard::new(&env, &name);
    run_ok("zfs", &["create", &guard.dataset]);
    let marker = mountpoint(&guard.dataset).join("made-by-hand");
    std::fs::write(&marker, "keep me").unwrap();

    let import = ImportRun::start(&name, &format!("oci:{}", env.image));

    assert!(!import.succeeded(), "{}", import.description);
    assert!(import.stderr().contains("already exists"), "{}", import.description);
    assert!(dataset_exists(&guard.dataset), "the dataset made by hand was destroyed");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "keep me");
    assert!(!import.lines.iter().any(|line| line["text"].as_str().is_some_and(|t| t.starts_with("$ buildah"))));
}

#[test]
fn invalid_name_is_rejected_before_any_command() {
    let output = run(coppice_bin(), &["import", "Bad.Name", "oci:127.0.0.1:5000/x:1"]);

    assert_eq!(output.status.code(), Some(2), "{}", describe(&coppice_bin(), &["import", "Bad.Name"], &output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"Bad.Name\""), "{stderr}");
    assert!(output.stdout.is_empty(), "something ran: {}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn missing_jails_dataset_fails_before_pull() {
    let env = test_env();
    let jails = format!("{}/{}", env.jails, unique_name("it-nojails"));
    let args = ["--jails-dataset", jails.as_str(), "import", "--json", "nojails", "oci:127.0.0.1:5000/coppice/sample:14"];

    let output = run(coppice_bin(), &args);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&coppice_bin(), &args, &output));
    assert!(stderr.contains(&format!("jails dataset {jails} does not exist")), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("buildah"), "the import went on to buildah");
}

#[test]
fn cleanup_refuses_a_ready_template() {
    let env = test_env();
    let name = unique_name("it-ready");
    let guard = TemplateGuard::new(&env, &name);
    run_ok("zfs", &["create", &guard.dataset]);
    run_ok("zfs", &["snapshot", &format!("{}@base", guard.dataset)]);

    let output = run(coppice_bin(), &["step", "cleanup", "--destroy", &name]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is ready"), "{stderr}");
    assert!(dataset_exists(&format!("{}@base", guard.dataset)), "cleanup destroyed a ready template");
}

#[test]
fn single_steps_chain_into_a_template() {
    let env = test_env();
    let name = unique_name("it-steps");
    let guard = TemplateGuard::new(&env, &name);
    let result = |args: &[&str]| -> Value {
        let stdout = run_ok(coppice_bin(), args);
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        serde_json::from_str::<Value>(&last).unwrap_or_else(|e| panic!("{last:?}: {e}"))["result"].clone()
    };
    let from = format!("oci:{}", env.image);

    let image = result(&["step", "pull", "--json", &from]);
    let mounted = result(&["step", "mount", "--json", image["image"].as_str().unwrap()]);
    let container = mounted["container"].as_str().unwrap().to_owned();
    let copied = result(&["step", "rsync", "--json", "--from", &from, &name, mounted["path"].as_str().unwrap()]);
    let snapshot = result(&["step", "snapshot", "--json", &name]);
    let cleaned = result(&["step", "cleanup", "--json", "--container", &container]);
    let listed = result(&["step", "reload", "--json"]);

    assert_eq!(copied["dataset"], guard.dataset.as_str());
    assert_eq!(snapshot["snapshot"], format!("{}@base", guard.dataset));
    assert_eq!(cleaned["removedContainer"], container.as_str());
    assert!(!buildah_containers().contains(&container), "container {container} left behind");
    let names: Vec<&str> = listed["templates"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&name.as_str()), "{name} not in {names:?}");
}
