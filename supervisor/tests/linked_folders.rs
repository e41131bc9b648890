//! The participant's code runs beside the agent supervisor and can write where it writes. Each folder the
//! supervisor is given (its status folder, its checkpoint's folder, its log's folder: mounts of the volume in the
//! cluster, plain folders in a local Job) is opened once, at start, as a root (`volume::safe::Root`): a folder
//! swapped for a symbolic link afterwards is never followed, for reading markers or for writing them.
//!
//! Before, markers were read and written by path: with `status -> /outside`, the pair obeyed a forged
//! `simulation.cancel` found there and wrote its own markers there.

#[macro_use]
mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

#[test]
fn a_status_folder_swapped_for_a_link_is_never_followed() {
    let mut scene = Scene::new("linked-status");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "1");
    let (mut sim, mut agent) = scene.pair();
    scene.expect(Duration::from_secs(60), "a first record", || scene.records() >= 1);

    // The participant moves the status folder away and links its name to a folder of its own, holding a forged
    // cancel marker.
    let real = scene.path("status-real");
    let outside = scene.path("outside");
    fs::rename(&scene.status, &real).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("simulation.cancel"), b"").unwrap();
    std::os::unix::fs::symlink(&outside, &scene.status).unwrap();

    let agent_code = agent.wait_exit(Duration::from_secs(60));
    let sim_code = sim.wait_exit(Duration::from_secs(15));
    ensure!(scene, agent_code == Some(0) && sim_code == Some(0), "both end normally: {agent_code:?} {sim_code:?}");
    let written = names(&real);
    for m in ["simulator-1.start0", "agent-1.start0", "agent-1.done", "simulator-1.done"] {
        ensure!(scene, written.contains(m), "{m} must be in the folder the supervisors opened: {written:?}");
    }
    ensure!(scene, names(&outside) == BTreeSet::from(["simulation.cancel".to_string()]), "{:?}", names(&outside));
    ensure!(scene, scene.records() == 5, "the forged cancel stopped nothing: every route ran");
}
