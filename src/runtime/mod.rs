//! The shared runtime of one operator process: the watch caches ([`watches`], [`cached`],
//! [`store`]), the argon2id workers ([`hasher`]) and the fair permits they hand out ([`fair`]),
//! the fenced leader Lease ([`leader`]), the ledger of apps that went away ([`ledger`]), the
//! brake on mass repair ([`repairs`]), metrics, the shared [`context`], the crate's errors, the
//! listeners' limits ([`serve`]) and the admin server ([`admin`]).
//!
//! May use: [`crate::model`].

pub mod admin;
pub mod cached;
pub mod context;
pub mod error;
pub mod fair;
pub mod hasher;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod providers;
pub mod repairs;
pub mod scheduled;
pub mod serve;
pub mod store;
pub mod watches;
pub mod writes;
