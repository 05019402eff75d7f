//! The builder and the plain shell pipeline (`scripts/coppice-import-oci.sh`) must
//! make identical template trees, so that the benchmark compares equal work.

use std::path::PathBuf;

use crate::support::{TemplateGuard, coppice_bin, dataset_exists, describe, mountpoint, run, test_env, unique_name};
use crate::tree::Tree;

fn reference_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/coppice-import-oci.sh")
}

#[test]
fn builder_and_script_make_identical_trees() {
    let env = test_env();
    let builder_name = unique_name("it-parity-builder");
    let script_name = unique_name("it-parity-script");
    let builder = TemplateGuard::new(&env, &builder_name);
    let script = TemplateGuard::new(&env, &script_name);

    let builder_args = ["import", builder_name.as_str(), &format!("oci:{}", env.image)];
    let builder_output = run(coppice_bin(), &builder_args);
    let script_path = reference_script();
    let script_args = [script_path.to_str().unwrap(), script_name.as_str(), env.image.as_str()];
    let script_output = run("bash", &script_args);

    assert!(builder_output.status.success(), "{}", describe(&coppice_bin(), &builder_args, &builder_output));
    assert!(script_output.status.success(), "{}", describe("bash".as_ref(), &script_args, &script_output));
    assert!(dataset_exists(&format!("{}@base", builder.dataset)));
    assert!(dataset_exists(&format!("{}@base", script.dataset)));
    let expected = Tree::read(&mountpoint(&script.dataset));
    let actual = Tree::read(&mountpoint(&builder.dataset));
    assert!(expected.len() > 40, "the script's template looks empty: {} entries", expected.len());
    let differences = expected.differences(&actual);
    assert!(differences.is_empty(), "the builder's template differs from the script's:\n{}", differences.join("\n"));
}
