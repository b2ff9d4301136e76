pub mod dsn;
pub mod retry;
