//! The page, split by feature: the app shell, the conversation list, settings, theme, model
//! picking and environment facts, download and stored models, and the chat.

pub mod app;
pub mod chat;
pub mod download_panel;
pub mod environment;
pub mod first_run;
pub mod message;
pub mod model_manager;
pub mod model_picker;
pub mod settings;
pub mod sidebar;
pub mod stored_models;
pub mod theme;
pub mod transfer;
