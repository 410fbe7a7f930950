//! The engine's own places, tried through the binary: a component over the
//! whole appliance directory backs up neither the store nor the state
//! directory (with a warning), and a component inside one is refused.

use crate::util::*;

#[test]
fn a_component_over_the_whole_directory_leaves_out_store_and_state_with_a_warning() {
    let fx = Fixture::custom(|fx| {
        fx.spec.components = vec![files_component("everything", &[&fx.dir], "")];
    });
    fx.create(&[]);
    next_second();
    let out = fx.backup(&["create"]);
    out.expect(0);
    for place in [&fx.state, &fx.store] {
        out.mentions(&format!("left out {}", place.display()));
    }
    let (name, report) = fx.create(&[]);
    let warnings = report["manifest"]["components"][0]["warnings"].to_string();
    assert!(
        warnings.contains(&format!("left out {}", fx.state.display()))
            && warnings.contains(&format!("left out {}", fx.store.display())),
        "{report:#}"
    );

    let target = fx.fresh_dir("restored");
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(0);
    assert!(under(&target, &fx.etc).is_dir());
    assert!(under(&target, &fx.config).is_file());
    assert!(
        !under(&target, &fx.state).exists(),
        "no state, no master.key"
    );
    assert!(
        !under(&target, &fx.store).exists(),
        "no images in the image"
    );
}

#[test]
fn a_component_inside_the_state_directory_is_refused_naming_both_paths() {
    let fx = Fixture::new();
    let inside = fx.state.join("tmp");
    let config = fx.config_variant("inside.toml", |spec| {
        spec.components
            .push(files_component("inside", &[&inside], ""));
    });
    let out = run(fx.cmd_with(&config).arg("create"));
    out.expect(2)
        .mentions(&inside.display().to_string())
        .mentions(&format!("inside {}", fx.state.display()));
}
