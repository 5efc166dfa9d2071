//! API tests: the real app on port 0, real HTTP demo upstreams.

mod auth;
mod cli;
mod console;
mod helpers;
mod home_card;
mod isolation;
mod limits;
mod playground;
mod products;
mod rules;
mod schema;
mod store;
