use std::process::ExitCode;

use super::ConfigArg;

pub fn migrate(arg: &ConfigArg) -> ExitCode {
    match super::load_config(arg) {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
