//! API tests: the real app on port 0, real HTTP demo upstreams.

mod admission;
mod auth;
mod cache;
mod checkout;
mod checkout_api;
mod checkout_property;
mod checkout_store;
mod cli;
mod console;
mod edge;
mod helpers;
mod home_card;
mod isolation;
mod limits;
mod playground;
mod products;
mod rules;
mod schema;
mod server;
mod store;
