//! What IPA's `system` extension does to the machine itself, beside the API: for
//! `system.lockdown`, bringing the network interfaces down once the API has stopped.

pub mod netif;
