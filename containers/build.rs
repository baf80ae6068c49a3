//! Builds `kiln-init`, the static pid 1 of every container, from `init/init.c`.
use std::{env, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let binary = out.join("kiln-init");
    let compiler = cc::Build::new().opt_level(2).get_compiler();
    let status = compiler
        .to_command()
        .args(["-static", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg("init/init.c")
        .status()
        .expect("run the C compiler for init/init.c");
    assert!(status.success(), "compiling init/init.c failed");
    println!("cargo:rerun-if-changed=init/init.c");
}
