//! Worker capabilities on a real cluster: what launchers find (PCI devices from a sysfs tree,
//! foreign architectures from a binfmt_misc tree, cached images, the CPU score) reaches the API
//! and `drover node show`; workloads that require them land where they are, a preference
//! orders without excluding, and what no node has is refused naming it. Every process instance
//! finds `DROVER_CPUS` and `DROVER_JOBS` in its environment, and its host/target architectures
//! with the package lists of its workload's `[[cross]]` entry for them. VMs boot, move live and
//! get cache ways; JARs run under a node's JVM.

#![allow(clippy::disallowed_methods)] // tests wait with the real clock

mod common;

use std::path::Path;

use common::{create_workload, instance_when, launch_one, Cluster};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A sysfs tree with one NVIDIA GPU, a binfmt_misc tree with qemu-arm enabled, and an image
/// directory holding `alpine`.
fn fixtures(root: &Path) {
    let gpu = root.join("sys/bus/pci/devices/0000:01:00.0");
    write(&gpu.join("vendor"), "0x10de\n");
    write(&gpu.join("device"), "0x2204\n");
    write(&gpu.join("class"), "0x030000\n");
    write(&root.join("binfmt/qemu-arm"), "enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\n");
    std::fs::create_dir_all(root.join("images/alpine")).unwrap();
    std::fs::create_dir_all(root.join("volumes")).unwrap();
    let accept = root.join("accept.sh");
    write(&accept, "#!/bin/sh\necho \"accepting $(cat result)\"\ntest \"$(cat result)\" = good\n");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&accept, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_reach_the_api_and_placement_and_instances_get_their_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let sys = dir.path().join("sys").display().to_string();
    let binfmt = dir.path().join("binfmt").display().to_string();
    let images = dir.path().join("images").display().to_string();
    let empty = dir.path().join("empty").display().to_string();
    std::fs::create_dir_all(&empty).unwrap();
    let script = format!("accept={}", dir.path().join("accept.sh").display());
    let volumes = dir.path().join("volumes").display().to_string();
    #[rustfmt::skip]
    let cluster = Cluster::start(&[
        &["--sysfs-root", &sys, "--binfmt-root", &binfmt, "--image-dir", &images, "--cpu-score", "1234",
          "--script", &script, "--volume-root", &volumes],
        // The other node's trees are empty: what it has is known whatever this machine has.
        &["--label", "zone=b", "--cpu-score", "700", "--sysfs-root", &empty, "--binfmt-root", &empty],
    ]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();

    // What the nodes are, through the API and the CLI.
    let nodes = api.get("/v1/nodes").await.unwrap();
    let nodes = nodes.as_array().unwrap();
    let gpu_node = nodes.iter().find(|n| n["report"]["cpu_score"] == 1234).expect("the GPU node's report");
    let plain_node = nodes.iter().find(|n| n["report"]["cpu_score"] == 700).expect("the other node's report");
    let gpu_id = gpu_node["uuid"].as_str().unwrap().to_owned();
    let plain_id = plain_node["uuid"].as_str().unwrap().to_owned();
    assert_eq!(gpu_node["report"]["pci"][0]["id"], "10de:2204", "{gpu_node}");
    assert_eq!(gpu_node["report"]["foreign_arches"][0], "arm");
    assert!(gpu_node["report"]["images"][0].as_str().unwrap().ends_with("/images/alpine"), "{gpu_node}");
    let features = gpu_node["report"]["features"].as_array().unwrap();
    for offered in ["script:accept", "volumes"] {
        assert!(features.iter().any(|f| f == offered), "the node offers {offered}: {gpu_node}");
    }
    let out = cluster.cli(&["node", "show", &gpu_id[..8]]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}{}", String::from_utf8_lossy(&out.stderr));
    for fact in ["10de:2204 (class 030000)", "cpu score       1234", "foreign arches  arm", "/images/alpine"] {
        assert!(shown.contains(fact), "drover node show says {fact:?}:\n{shown}");
    }
    let measured = cluster.cli(&["node", "show", "ffffffff"]);
    assert!(!measured.status.success(), "an unknown node is an error");

    // Requirements: the GPU, the foreign architecture, the score.
    let sh = |name: &str, extra: &str| {
        format!(
            "name = \"{name}\"\n[resources]\nvcpus = 2\nmem_mb = 64\n[backend]\ntype = \"process\"\n\
             argv = [\"/bin/sh\", \"-c\", \"echo cpus=$DROVER_CPUS jobs=$DROVER_JOBS; \
             echo $DROVER_HOST_ARCH $DROVER_TARGET_ARCH [$DROVER_PACKAGES] [$DROVER_PACKAGES_SKIP] $CC\"]\n[restart]\npolicy = \"never\"\n{extra}"
        )
    };
    for (name, extra, node) in [
        ("gpu", "[requirements]\npci = [\"10de:*\"]\n", &gpu_id),
        (
            "armv7",
            "[requirements]\narch = \"armv7\"\n[[cross]]\nhost = \"armv7\"\n[[cross]]\nhost = \"*\"\ntarget = \"arm\"\n\
             packages = [\"cross-arm-gcc\", \"rpm-x86\"]\nskip = [\"rpm\"]\nenv = { CC = \"arm-gcc\" }\n",
            &gpu_id,
        ),
        ("fast", "[requirements]\nmin_cpu_score = 1000\n", &gpu_id),
        ("zoned", "[preferences]\nlabels = { zone = \"b\" }\n", &plain_id),
    ] {
        create_workload(&api, &sh(name, extra)).await;
        let id = launch_one(&api, name).await;
        let done = instance_when(&api, &id, "exited", common::PATIENCE, |i| i["state"] == "exited").await;
        assert_eq!(&done["node"], node.as_str(), "{name} ran on {}: {done}", done["node"]);
        let logs = api.get(&format!("/v1/instances/{id}/logs")).await.unwrap();
        let text = logs["data"].as_str().unwrap().to_owned();
        let mut lines = text.lines().map(str::trim);
        let line = lines.next().unwrap_or_default();
        assert!(line == "cpus=2 jobs=1" || line == "cpus=2 jobs=2", "{name}: the parallelism hint: {line:?}");
        // The host/target combination and, for the cross build, its package lists.
        let host = std::env::consts::ARCH;
        let setup = if name == "armv7" {
            format!("{host} arm [cross-arm-gcc rpm-x86] [rpm] arm-gcc")
        } else {
            format!("{host} {host} [] []")
        };
        assert_eq!(lines.next(), Some(setup.as_str()), "{name}: {text:?}");
    }

    // Checks: the node's script runs after the program, where the program ran; its failure is
    // the instance's.
    for (name, result, state, code) in [("accepted", "good", "exited", 0), ("rejected", "bad", "failed", 1)] {
        let file = format!(
            "name = \"{name}\"\nsize = \"tiny\"\nchecks = [\"accept\"]\n[backend]\ntype = \"process\"\n\
             argv = [\"/bin/sh\", \"-c\", \"echo {result} > result\"]\n[restart]\npolicy = \"never\"\n"
        );
        create_workload(&api, &file).await;
        let id = launch_one(&api, name).await;
        let done = instance_when(&api, &id, state, common::PATIENCE, |i| i["state"] == state).await;
        assert_eq!((&done["node"], &done["exit_code"]), (&gpu_node["uuid"], &serde_json::json!(code)), "{done}");
        let logs = api.get(&format!("/v1/instances/{id}/logs")).await.unwrap();
        let text = logs["data"].as_str().unwrap();
        assert!(text.contains(&format!("accepting {result}")), "{name}: {text:?}");
        assert_eq!(text.contains("drover: check accept failed (exit 1)"), code == 1, "{name}: {text:?}");
    }

    // What no node has: refused at once, naming the requirement; the plan says so too.
    create_workload(&api, &sh("nowhere", "[requirements]\npci = [\"dead:*\"]\n")).await;
    let id = launch_one(&api, "nowhere").await;
    let failed = instance_when(&api, &id, "an answer", common::PATIENCE, |i| {
        !["pending", "starting"].contains(&i["state"].as_str().unwrap_or_default())
    })
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["why"].as_str().unwrap().contains("missing PCI devices (dead:*)"), "{failed}");
    let plan = cluster.cli(&["plan", "nowhere"]);
    let said = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(1), "{said}");
    assert!(said.contains("lack the PCI devices it requires (dead:*)"), "{said}");

    // Disk is placed by what the nodes report: more than any has in all is refused naming it.
    let huge = sh("huge", "").replace("mem_mb = 64\n", "mem_mb = 64\ndisk_mb = 1000000000\n");
    create_workload(&api, &huge).await;
    let id = launch_one(&api, "huge").await;
    let failed = instance_when(&api, &id, "an answer", common::PATIENCE, |i| {
        !["pending", "starting"].contains(&i["state"].as_str().unwrap_or_default())
    })
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["why"].as_str().unwrap().contains("insufficient disk"), "{failed}");
}

/// A sim workload of `name` that runs `ms` and prefers zone a.
fn sim(name: &str, ms: u64) -> String {
    format!(
        "name = \"{name}\"\n[resources]\nmem_mb = 4\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = {ms}\n\
         [restart]\npolicy = \"never\"\n[preferences]\nlabels = {{ zone = \"a\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_work_finish_then_moves_what_is_left_at_its_deadline_and_leaves_the_node_in_maintenance() {
    let cluster =
        Cluster::start(&[&["--backend", "sim", "--label", "zone=a"], &["--backend", "sim", "--label", "zone=b"]]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    create_workload(&api, &sim("short", 3_000)).await;
    create_workload(&api, &sim("long", 600_000)).await;
    let short = launch_one(&api, "short").await;
    let long = launch_one(&api, "long").await;
    let first = instance_when(&api, &short, "short to run", common::PATIENCE, |i| i["state"] == "running").await;
    let node = first["node"].as_str().unwrap().to_owned();
    let second = instance_when(&api, &long, "long to run", common::PATIENCE, |i| i["state"] == "running").await;
    assert_eq!(second["node"], node.as_str(), "both prefer zone a");

    let out = cluster.cli(&["node", "drain", &node[..8], "--deadline", "6s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Draining, shown with what is left of its deadline; new work goes elsewhere though it
    // prefers this node.
    let listed = common::wait_for("node ls to show the drain", || async {
        let out = cluster.cli(&["node", "ls"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().any(|l| l.starts_with(&node[..8]) && l.contains("draining (")).then_some(text)
    })
    .await;
    assert!(listed.contains("s left)"), "{listed}");
    let newcomer = launch_one(&api, "long").await;
    let placed = instance_when(&api, &newcomer, "new work to run", common::PATIENCE, |i| i["state"] == "running").await;
    assert_ne!(placed["node"], node.as_str(), "a draining node takes no new work");

    // The short one finishes there on its own; the long one runs on until the deadline.
    let done = instance_when(&api, &short, "short to end", common::PATIENCE, |i| i["state"] == "exited").await;
    assert_eq!(done["node"], node.as_str(), "it finished where it ran: {done}");
    let still = api.get(&format!("/v1/instances/{long}")).await.unwrap();
    assert_eq!((still["state"].as_str(), still["node"].as_str()), (Some("running"), Some(node.as_str())), "{still}");
    // At the deadline it is stopped and starts on the other node; the drained node stays in
    // maintenance.
    let moved = instance_when(&api, &long, "long to move", common::PATIENCE, |i| {
        i["state"] == "running" && i["node"] != node.as_str()
    })
    .await;
    assert_ne!(moved["node"], node.as_str());
    common::restore_evacuated(&api, &node).await;
}

/// The `vm` backend on a real cluster (the EVE seed's hypervisor tasks): the launcher offers a
/// guest architecture per device model it finds and its tax; a guest boots under qemu, its
/// console is the instance's output and its reset the instance's end; a guest of an
/// architecture no node has a device model for is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_under_its_device_model_and_its_console_is_the_output() {
    const TEST: &str = "a_vm_boots_under_its_device_model_and_its_console_is_the_output";
    if std::env::consts::ARCH != "x86_64" {
        return testutil::skip("qemu", TEST, "the test guest is an x86 multiboot kernel");
    }
    if testutil::vm::x86_device_model().is_none() {
        return testutil::skip("qemu", TEST, "no qemu-system-x86_64 on PATH (apt-get install qemu-system-x86)");
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = match testutil::vm::multiboot_kernel(dir.path()) {
        Ok(kernel) => kernel,
        Err(why) => return testutil::skip("qemu", TEST, &why),
    };
    let cluster = Cluster::start(&[&["--backend", "vm", "--backend", "process"]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    let nodes = api.get("/v1/nodes").await.unwrap();
    let report = &nodes[0]["report"];
    assert!(report["features"].as_array().unwrap().iter().any(|f| f == "vm:x86_64"), "{report}");
    assert_eq!(report["anchor_tax_mb"]["vm"], 128, "the device model's share before any is measured: {report}");

    let vm = |name: &str, extra: &str| {
        format!(
            "name = \"{name}\"\n[resources]\nvcpus = 1\nmem_mb = 64\n[backend]\ntype = \"vm\"\nkernel = \"{}\"\n\
             accel = \"tcg\"\n{extra}[restart]\npolicy = \"never\"\n",
            kernel.display()
        )
    };
    create_workload(&api, &vm("guest", "")).await;
    let id = launch_one(&api, "guest").await;
    let done = instance_when(&api, &id, "the guest to end", common::PATIENCE, |i| {
        ["exited", "failed"].contains(&i["state"].as_str().unwrap_or_default())
    })
    .await;
    let logs = api.get(&format!("/v1/instances/{id}/logs")).await.unwrap();
    let text = logs["data"].as_str().unwrap();
    assert_eq!(
        (&done["state"], &done["exit_code"]),
        (&serde_json::json!("exited"), &serde_json::json!(0)),
        "{done} {text:?}"
    );
    assert!(text.contains(testutil::vm::GREETING), "the guest's console: {text:?}");

    create_workload(&api, &vm("riscv", "arch = \"riscv64\"\n")).await;
    let id = launch_one(&api, "riscv").await;
    let failed = instance_when(&api, &id, "an answer", common::PATIENCE, |i| {
        !["pending", "starting"].contains(&i["state"].as_str().unwrap_or_default())
    })
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["why"].as_str().unwrap().contains("vm:riscv64"), "{failed}");
}

/// The EVE seed's binary artifacts on a real cluster: a launcher with `--backend artifact` finds
/// the JVM among its hypervisor tools and offers `runtime:jar` with the runtime's tax; a JAR in
/// its volume runs under the JVM as the instance's anchor process, with its arguments, its
/// environment and its memory as the JVM's heap; a JAR that outgrows that heap fails with the
/// JVM's own error; one outside the node's volumes is refused; a node with no runtime takes no
/// JAR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jar_runs_under_the_nodes_jvm_with_its_memory_as_the_heap() {
    const TEST: &str = "a_jar_runs_under_the_nodes_jvm_with_its_memory_as_the_heap";
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("artifacts");
    std::fs::create_dir_all(&volume).unwrap();
    let jar = match testutil::jar::report(&volume) {
        Ok(jar) => jar,
        Err(why) => return testutil::skip("jar", TEST, &why),
    };
    let elsewhere = dir.path().join("elsewhere.jar");
    std::fs::copy(&jar, &elsewhere).unwrap();
    // The JVM runs as the tenant's user (the launcher is root in CI): it must reach the JAR.
    use std::os::unix::fs::PermissionsExt as _;
    for open in [dir.path(), &volume] {
        std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let volume_root = volume.display().to_string();
    #[rustfmt::skip]
    let cluster = Cluster::start(&[
        &["--backend", "artifact", "--volume-root", &volume_root, "--label", "jvm=yes"],
        &["--backend", "process", "--volume-root", &volume_root],
    ]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    let nodes = api.get("/v1/nodes").await.unwrap();
    let jvm = nodes.as_array().unwrap().iter().find(|n| n["report"]["labels"]["jvm"] == "yes").unwrap();
    let report = &jvm["report"];
    assert!(report["features"].as_array().unwrap().iter().any(|f| f == "runtime:jar"), "{report}");
    assert_eq!(report["anchor_tax_mb"]["artifact"], 128, "the runtime's share before any is measured: {report}");

    let artifact = |name: &str, path: &std::path::Path, args: &str| {
        format!(
            "name = \"{name}\"\n[resources]\nvcpus = 1\nmem_mb = 256\n[backend]\ntype = \"artifact\"\n\
             path = \"{}\"\nargs = [{args}]\n[restart]\npolicy = \"never\"\n",
            path.display()
        )
    };
    let finished = |i: &serde_json::Value| ["exited", "failed"].contains(&i["state"].as_str().unwrap_or_default());
    create_workload(&api, &artifact("report", &jar, "\"hello\", \"world\"")).await;
    let id = launch_one(&api, "report").await;
    let done = instance_when(&api, &id, "the JAR to end", common::PATIENCE, finished).await;
    let logs = api.get(&format!("/v1/instances/{id}/logs")).await.unwrap();
    let text = logs["data"].as_str().unwrap().to_owned();
    assert_eq!(
        (&done["state"], &done["exit_code"]),
        (&serde_json::json!("exited"), &serde_json::json!(0)),
        "{done} {text:?}"
    );
    assert_eq!(done["node"], jvm["uuid"], "only the node with a JVM runs JARs: {done}");
    assert!(text.contains("args=hello world") && text.contains("cpus=1"), "{text:?}");
    let heap: u64 = text.lines().find_map(|l| l.strip_prefix("heap_max_mib=")).unwrap().trim().parse().unwrap();
    // The JVM reports its heap less a survivor space; left to size it from the cgroup (256 +
    // the runtime's 128 MiB) it takes far less (121 MiB with JDK 17 here).
    assert!((200..=256).contains(&heap), "the workload's 256 MiB is the JVM's heap: {heap} MiB");

    create_workload(&api, &artifact("fill", &jar, "\"fill\"")).await;
    let id = launch_one(&api, "fill").await;
    let done = instance_when(&api, &id, "the JAR to fill its heap", common::PATIENCE, finished).await;
    let logs = api.get(&format!("/v1/instances/{id}/logs")).await.unwrap();
    let text = logs["data"].as_str().unwrap();
    assert_eq!((&done["state"], &done["exit_code"]), (&serde_json::json!("failed"), &serde_json::json!(1)), "{done}");
    assert!(text.contains("java.lang.OutOfMemoryError"), "the JVM's own error, not the kernel's kill: {text:?}");

    create_workload(&api, &artifact("stray", &elsewhere, "")).await;
    let id = launch_one(&api, "stray").await;
    let refused = instance_when(&api, &id, "a refusal", common::PATIENCE, |i| {
        !["pending", "starting"].contains(&i["state"].as_str().unwrap_or_default())
    })
    .await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(refused["why"].as_str().unwrap().contains("not a file under this node's --volume-root"), "{refused}");
}

/// Cache ways as a resource (ciao's cache QoS) on a real cluster, against a resctrl tree: the
/// node reports its ways, each instance that asks gets a group of its own with disjoint ways
/// that its shim joined, one that finds none free waits saying why, and an instance's end
/// gives its ways to the one waiting and removes its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_ways_are_given_to_one_instance_at_a_time_through_resctrl_groups() {
    let dir = tempfile::tempdir().unwrap();
    let resctrl = dir.path().join("resctrl");
    write(&resctrl.join("info/L3/cbm_mask"), "fff\n");
    write(&resctrl.join("info/L3/num_closids"), "16\n");
    write(&resctrl.join("schemata"), "L3:0=fff;1=fff\n");
    let root = resctrl.display().to_string();
    let cluster = Cluster::start(&[&["--resctrl-root", &root]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    let nodes = api.get("/v1/nodes").await.unwrap();
    assert_eq!(nodes[0]["report"]["cache_ways"], 12, "{}", nodes[0]);
    create_workload(
        &api,
        "name = \"ways\"\nsize = \"tiny\"\n[requirements]\ncache_ways = 4\n[backend]\ntype = \"process\"\n\
         argv = [\"/bin/sleep\", \"60\"]\n[restart]\npolicy = \"never\"\n",
    )
    .await;
    // Groups are named after the node and the instance (`drover-NODE-INSTANCE`).
    let node = api.get("/v1/nodes").await.unwrap()[0]["uuid"].as_str().unwrap().to_owned();
    let group_of = |id: &str| resctrl.join(format!("drover-{node}-{id}"));
    let mut running = Vec::new();
    for _ in 0..3 {
        let id = launch_one(&api, "ways").await;
        instance_when(&api, &id, "running", common::PATIENCE, |i| i["state"] == "running").await;
        running.push(id);
    }
    let mut masks: Vec<String> = running
        .iter()
        .map(|id| {
            let group = group_of(id);
            let tasks = std::fs::read_to_string(group.join("tasks")).unwrap_or_default();
            assert!(tasks.trim().parse::<u32>().is_ok(), "the shim joined {}: {tasks:?}", group.display());
            std::fs::read_to_string(group.join("schemata")).unwrap().trim().to_owned()
        })
        .collect();
    masks.sort();
    assert_eq!(masks, ["L3:0=00f;1=00f", "L3:0=0f0;1=0f0", "L3:0=f00;1=f00"], "disjoint ways in every domain");

    let waiting = launch_one(&api, "ways").await;
    let queued = instance_when(&api, &waiting, "queued", common::PATIENCE, |i| {
        i["why"].as_str().unwrap_or_default().contains("insufficient cache ways")
    })
    .await;
    assert_ne!(queued["state"], "running", "{queued}");
    api.post(&format!("/v1/instances/{}/stop", running[0]), &serde_json::json!({})).await.unwrap();
    instance_when(&api, &waiting, "running", common::PATIENCE, |i| i["state"] == "running").await;
    let gone = group_of(&running[0]);
    testutil::wait_for("the stopped instance's group to be removed", std::time::Duration::from_secs(10), || {
        let gone = gone.clone();
        async move { (!gone.exists()).then_some(()) }
    })
    .await;
    assert!(group_of(&waiting).join("schemata").exists());
}

/// Live migration (ciao's TODO) on a real cluster: a counting guest on one launcher moves to
/// the other without a stop. Its count goes on where it was (the state travelled, not a new
/// boot), it never leaves `running`, the controller's record and the nodes' own reports move
/// with it, and a second migration brings it back. A guest asked to go to a node that does not
/// take migrations stays where it runs, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_moves_live_to_another_node_and_counts_on_there() {
    const TEST: &str = "a_running_vm_moves_live_to_another_node_and_counts_on_there";
    if std::env::consts::ARCH != "x86_64" {
        return testutil::skip("qemu", TEST, "the test guest is an x86 multiboot kernel");
    }
    if testutil::vm::x86_device_model().is_none() {
        return testutil::skip("qemu", TEST, "no qemu-system-x86_64 on PATH (apt-get install qemu-system-x86)");
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = match testutil::vm::counting_kernel(dir.path()) {
        Ok(kernel) => kernel,
        Err(why) => return testutil::skip("qemu", TEST, &why),
    };
    let migrating: &[&str] = &["--backend", "vm", "--migration-listen", "127.0.0.1:0"];
    let cluster = Cluster::start(&[migrating, migrating, &["--backend", "vm"]]);
    cluster.wait_ready(3).await;
    let api = cluster.admin();
    let nodes = api.get("/v1/nodes").await.unwrap();
    let features = |n: &serde_json::Value| n["report"]["features"].as_array().unwrap().clone();
    let plain: Vec<String> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| !features(n).iter().any(|f| f == "migrate"))
        .map(|n| n["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(plain.len(), 1, "two nodes take migrations: {nodes}");

    let workload = format!(
        // Bounded: a guest that never ends must not outlive a failed run (workloads outlive
        // their launchers by design).
        "name = \"counter\"\nmax_run_time = \"3m\"\n[resources]\nvcpus = 1\nmem_mb = 32\n[requirements]\n\
         features = [\"migrate\"]\n[backend]\ntype = \"vm\"\nkernel = \"{}\"\naccel = \"tcg\"\n[restart]\n\
         policy = \"never\"\n",
        kernel.display()
    );
    create_workload(&api, &workload).await;
    let id = launch_one(&api, "counter").await;
    let ticks = |id: String| {
        let api = &api;
        async move {
            let logs = api.get(&format!("/v1/instances/{id}/logs")).await.ok()?;
            Some(testutil::vm::ticks(logs["data"].as_str()?))
        }
    };
    let counting = |at_least: u64| {
        let id = id.clone();
        async move {
            common::wait_within("the guest to count", common::PATIENCE, || {
                let id = id.clone();
                async move { ticks(id).await.filter(|t| t.last().is_some_and(|n| *n >= at_least)) }
            })
            .await
        }
    };
    let first = instance_when(&api, &id, "the guest to run", common::PATIENCE, |i| i["state"] == "running").await;
    let from = first["node"].as_str().unwrap().to_owned();
    assert_eq!(counting(5).await.first(), Some(&1), "a fresh guest counts from 1");

    // Moved where the scheduler chooses: the only other node that takes migrations.
    let answer = api.post(&format!("/v1/instances/{id}/migrate"), &serde_json::json!({})).await.unwrap();
    assert_eq!(answer["state"], "running", "{answer}");
    let moved = instance_when(&api, &id, "the guest to move", common::PATIENCE, |i| {
        i["node"].as_str().is_some_and(|n| n != from)
    })
    .await;
    let to = moved["node"].as_str().unwrap().to_owned();
    assert!(!plain.contains(&to), "{moved}");
    assert_eq!(moved["state"], "running", "{moved}");
    assert!(moved["why"].as_str().unwrap_or_default().contains("migrated live"), "{moved}");
    // Its output is now the destination's: the count goes on from where it was.
    let there = counting(0).await;
    let resumed_at = there.first().copied().unwrap();
    assert!(resumed_at > 5, "the guest carried its count over (first line at the destination: tick {resumed_at})");
    let later = counting(resumed_at + 5).await;
    assert!(later.windows(2).all(|w| w[1] == w[0] + 1), "it counts on without a gap or a reboot: {later:?}");
    // Only the destination reports it active; the source dropped its copy.
    common::wait_within("one copy, at the destination", common::PATIENCE, || async {
        let copies = common::active_copies(&api).await?;
        (copies.get(&id)? == &vec![to.clone()]).then_some(())
    })
    .await;

    // Asked to go to a node that takes no migrations, it stays and the record says why.
    let refused = format!("/v1/instances/{id}/migrate?to={}", plain[0]);
    api.post(&refused, &serde_json::json!({})).await.unwrap();
    let stayed = instance_when(&api, &id, "the refusal", common::PATIENCE, |i| {
        i["why"].as_str().unwrap_or_default().contains("live migration refused")
    })
    .await;
    assert_eq!((stayed["state"].as_str(), stayed["node"].as_str()), (Some("running"), Some(to.as_str())), "{stayed}");

    // And back, named.
    api.post(&format!("/v1/instances/{id}/migrate?to={from}"), &serde_json::json!({})).await.unwrap();
    let back =
        instance_when(&api, &id, "the guest to come back", common::PATIENCE, |i| i["node"] == from.as_str()).await;
    assert_eq!(back["state"], "running", "{back}");
    let again = counting(0).await;
    assert!(again.first().is_some_and(|n| *n > later.last().copied().unwrap_or(0)), "{again:?} after {later:?}");
    assert_eq!(back["restarts"], 0, "never restarted: {back}");

    // Evacuating its node moves it live too, before the node goes into maintenance.
    let answer = api.post(&format!("/v1/nodes/{from}/evacuate"), &serde_json::json!({})).await.unwrap();
    assert_eq!(answer["live_migrations"], 1, "{answer}");
    let evacuated =
        instance_when(&api, &id, "the evacuation to move it", common::PATIENCE, |i| i["node"] == to.as_str()).await;
    assert_eq!(
        (evacuated["state"].as_str(), evacuated["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{evacuated}"
    );
    let after = counting(0).await;
    assert!(after.first().is_some_and(|n| *n > again.last().copied().unwrap_or(0)), "{after:?} after {again:?}");
    // The evacuation is over once the node no longer drains: what was left has been stopped.
    common::wait_within("the live evacuation to end", common::PATIENCE, || async {
        let nodes = api.get("/v1/nodes").await.ok()?;
        let n = nodes.as_array()?.iter().find(|n| n["uuid"] == from.as_str())?.clone();
        (n["status"] == "maintenance" && n["report"]["draining_until_unix_ms"].is_null()).then_some(())
    })
    .await;
    common::restore_evacuated(&api, &from).await;
    // Without live migration, an evacuation stops it and it starts afresh elsewhere.
    let answer = api.post(&format!("/v1/nodes/{to}/evacuate?live=false"), &serde_json::json!({})).await.unwrap();
    assert!(answer.get("live_migrations").is_none(), "{answer}");
    let restarted = instance_when(&api, &id, "the evacuation to restart it", common::PATIENCE, |i| {
        i["state"] == "running" && i["node"].as_str().is_some_and(|n| n != to)
    })
    .await;
    assert_eq!(counting(1).await.first(), Some(&1), "a new boot counts from 1: {restarted}");
    common::restore_evacuated(&api, &to).await;

    api.post(&format!("/v1/instances/{id}/cancel"), &serde_json::json!({})).await.unwrap();
    instance_when(&api, &id, "the guest to stop", common::PATIENCE, |i| i["state"] == "canceled").await;
}
