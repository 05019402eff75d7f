//! The start-up sweep against real datasets and containers.

use coppice::names::Dataset;
use coppice::steps::Tools;
use uuid::Uuid;

use crate::support::{TemplateGuard, buildah_containers, dataset_exists, run_ok, test_env, unique_name};

#[tokio::test]
async fn sweep_removes_only_marked_leftovers_of_dead_imports() {
    let env = test_env();
    let dead_job = Uuid::new_v4();
    let live_job = Uuid::new_v4();
    let half = TemplateGuard::new(&env, &unique_name("it-sweep-half"));
    let live = TemplateGuard::new(&env, &unique_name("it-sweep-live"));
    let done = TemplateGuard::new(&env, &unique_name("it-sweep-done"));
    let hand = TemplateGuard::new(&env, &unique_name("it-sweep-hand"));
    run_ok("zfs", &["create", "-o", &format!("coppice:job={dead_job}"), &half.dataset]);
    run_ok("zfs", &["create", "-o", &format!("coppice:job={live_job}"), &live.dataset]);
    run_ok("zfs", &["create", "-o", &format!("coppice:job={dead_job}"), &done.dataset]);
    run_ok("zfs", &["snapshot", &format!("{}@base", done.dataset)]);
    run_ok("zfs", &["create", &hand.dataset]);
    let dead_container = format!("coppice-{dead_job}");
    let live_container = format!("coppice-{live_job}");
    run_ok("buildah", &["pull", "--os", "freebsd", &format!("docker://{}", env.image)]);
    run_ok("buildah", &["from", "--pull=never", "--name", &dead_container, &env.image]);
    run_ok("buildah", &["mount", &dead_container]);
    run_ok("buildah", &["from", "--pull=never", "--name", &live_container, &env.image]);
    let jails = Dataset::parse(&env.jails).unwrap();

    let report = coppice::sweep::sweep(&Tools::default(), &jails, |job| job == dead_job).await;

    let containers = buildah_containers();
    let _ = std::process::Command::new("buildah").args(["rm", &live_container]).output();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.destroyed_datasets, std::slice::from_ref(&half.dataset));
    assert_eq!(report.removed_containers, std::slice::from_ref(&dead_container));
    assert!(!dataset_exists(&half.dataset), "the unfinished dataset survived");
    assert!(dataset_exists(&live.dataset), "a live job's dataset was destroyed");
    assert!(dataset_exists(&format!("{}@base", done.dataset)), "a ready template was destroyed");
    assert!(dataset_exists(&hand.dataset), "an unmarked dataset was destroyed");
    assert!(!containers.contains(&dead_container), "the dead job's container survived");
    assert!(containers.contains(&live_container), "a live job's container was removed");
}
