//! The committed CRDs in `crds/` are exactly what the Rust types generate.
//! Regenerate them with `POSTERN_UPDATE_CRDS=1 cargo test -p postern-operator --test crds`.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let update = std::env::var_os("POSTERN_UPDATE_CRDS").is_some();
    for (name, yaml) in postern_operator::api::crd_files().expect("serialize CRDs") {
        let path = dir.join(&name);
        if update {
            std::fs::write(&path, &yaml).expect("write CRD");
            continue;
        }
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with POSTERN_UPDATE_CRDS=1", path.display()));
        assert!(
            committed == yaml,
            "{} differs from the CRD the code generates; run \
             POSTERN_UPDATE_CRDS=1 cargo test -p postern-operator --test crds and commit",
            path.display()
        );
    }
}
