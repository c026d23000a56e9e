//! Who a client is, for quotas and anything else kept per client.
//!
//! An IPv4 address is one client. An IPv6 host is usually given a whole /64 (or more), so
//! counting every /128 as its own client would hand one host 2^64 quotas: IPv6 addresses are
//! grouped by a configurable prefix instead.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::Ipv6Net;

/// How many leading bits of an IPv6 address name its client: 32 to 128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Prefix(u8);

impl Ipv6Prefix {
    /// Shorter than /32 would merge whole providers' customers into one client.
    pub const SHORTEST: u8 = 32;
    pub const LONGEST: u8 = 128;

    /// `None` outside 32..=128.
    pub fn new(len: u8) -> Option<Self> {
        (Self::SHORTEST..=Self::LONGEST)
            .contains(&len)
            .then_some(Self(len))
    }
}

/// One client: an IPv4 address (IPv4-mapped IPv6 addresses included) or an IPv6 network.
/// Its `Display` (`203.0.113.9`, `2001:db8:1:2::/64`) is stable, for use in keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(Network);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Network {
    V4(Ipv4Addr),
    V6(Ipv6Net),
}

impl ClientId {
    /// The client that `ip` (the resolved client address) belongs to.
    pub fn new(ip: IpAddr, ipv6_prefix: Ipv6Prefix) -> Self {
        Self(match ip.to_canonical() {
            IpAddr::V4(v4) => Network::V4(v4),
            IpAddr::V6(v6) => Network::V6(
                Ipv6Net::new(v6, ipv6_prefix.0)
                    .expect("Ipv6Prefix is at most 128")
                    .trunc(),
            ),
        })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Network::V4(v4) => v4.fmt(f),
            Network::V6(net) => net.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str, prefix: u8) -> ClientId {
        ClientId::new(ip.parse().unwrap(), Ipv6Prefix::new(prefix).unwrap())
    }

    #[test]
    fn an_ipv4_address_is_a_client_of_its_own() {
        assert_eq!(client("203.0.113.9", 64).to_string(), "203.0.113.9");
        assert_ne!(client("203.0.113.9", 64), client("203.0.113.10", 64));
    }

    #[test]
    fn an_ipv4_mapped_ipv6_address_is_the_ipv4_client() {
        assert_eq!(client("::ffff:203.0.113.9", 64), client("203.0.113.9", 64));
        assert_eq!(client("::ffff:203.0.113.9", 64).to_string(), "203.0.113.9");
    }

    #[test]
    fn the_addresses_of_one_ipv6_prefix_are_one_client() {
        let first = client("2001:db8:1:2::1", 64);
        assert_eq!(first, client("2001:db8:1:2:ffff:ffff:ffff:ffff", 64));
        assert_ne!(first, client("2001:db8:1:3::1", 64));
        assert_eq!(first.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn the_prefix_length_decides_how_much_of_an_ipv6_address_counts() {
        assert_eq!(client("2001:db8:1:2::1", 48), client("2001:db8:1:3::1", 48));
        assert_eq!(client("2001:db8:1:2::1", 48).to_string(), "2001:db8:1::/48");
        assert_ne!(client("2001:db8::1", 128), client("2001:db8::2", 128));
        assert_eq!(client("2001:db8::1", 128).to_string(), "2001:db8::1/128");
    }

    #[test]
    fn prefix_lengths_outside_32_to_128_are_refused() {
        assert_eq!(Ipv6Prefix::new(31), None);
        assert_eq!(Ipv6Prefix::new(129), None);
        assert!(Ipv6Prefix::new(32).is_some() && Ipv6Prefix::new(128).is_some());
    }
}
