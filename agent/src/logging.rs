//! Logging, with a filter that `/logging` can change while the agent runs (an SRE turning on
//! `debug` for one module during an incident, without a restart).

use std::{
    io::IsTerminal as _,
    sync::{Mutex, OnceLock},
};

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};

struct Level {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static LEVEL: OnceLock<Level> = OnceLock::new();

pub fn init(filter: &str) {
    let (layer, handle) = reload::Layer::new(EnvFilter::new(filter));
    // Colour codes only for a person at a terminal: in a pod's log (a file or a pipe) they
    // are noise that log collectors store and search through.
    let ansi = std::io::stdout().is_terminal();
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi))
        .init();
    let _ = LEVEL.set(Level { handle, current: Mutex::new(filter.to_owned()) });
}

/// The filter in force.
pub fn current() -> String {
    LEVEL.get().map(|l| l.current.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
}

/// Replaces the filter (`info`, `nodemesh=debug,warn`, ...); a filter that does not parse is
/// refused and the old one stays.
pub fn set(filter: &str) -> Result<(), String> {
    let parsed = EnvFilter::try_new(filter).map_err(|e| format!("{filter:?} is not a log filter: {e}"))?;
    let level = LEVEL.get().ok_or("logging is not initialised")?;
    level.handle.reload(parsed).map_err(|e| e.to_string())?;
    *level.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_owned();
    tracing::info!(filter, "log filter changed");
    Ok(())
}
