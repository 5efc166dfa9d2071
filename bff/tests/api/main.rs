//! API tests: the real app on port 0, real HTTP demo upstreams.

mod admission;
mod auth;
mod cache;
mod checkout;
mod checkout_api;
mod checkout_property;
mod checkout_store;
mod cli;
mod cluster;
mod console;
mod edge;
mod flash_sale;
mod helpers;
mod home_card;
mod isolation;
mod limits;
mod local_redis;
mod playground;
mod products;
mod resilience;
mod rules;
mod schema;
mod server;
mod shop;
mod store;
