//! Commands that talk to the store.

use std::process::ExitCode;
use std::time::Duration;

use super::{ConfigArg, EXIT_FAILED, load_config};
use crate::store::{OpenOptions, Store};

/// `lineaged migrate`: apply the migrations alone; a no-op when up to date.
pub fn migrate(arg: &ConfigArg) -> ExitCode {
    let cfg = match load_config(arg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match super::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = OpenOptions {
        max_connections: 2,
        connect_deadline: Duration::from_secs(30),
    };
    rt.block_on(async {
        let result = async {
            let store = Store::connect(cfg.database.url.expose(), &opts).await?;
            let applied = store.migrate().await?;
            store.close().await;
            Ok::<_, crate::store::StoreError>((store.backend(), applied))
        }
        .await;
        match result {
            Ok((backend, applied)) => {
                println!("{backend}: {applied} migration(s) applied; schema is up to date");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", error_chain(&e));
                ExitCode::from(EXIT_FAILED)
            }
        }
    })
}

pub(crate) use crate::error_chain;
