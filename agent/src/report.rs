//! The records the agent reports and the CLI renders: `/status` (`status`) and `/flows`
//! (`flows`). Plain data with serde: they import nothing of the agent's machinery, so the CLI
//! that reads them back needs none of it.

pub mod flows;
pub mod status;
