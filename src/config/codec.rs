//! `[local] compression` and `level`: which codec a new archive is written with.

/// The compression of an archive (`[local] compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Codec {
    /// pigz-style parallel gzip: one gzip member, `.tar.gz`.
    #[default]
    Gzip,
    /// Multithreaded zstd (one frame, with its content checksum), `.tar.zst`.
    Zstd,
}

impl Codec {
    /// The name in the config and in the manifest's `compression`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// `gzip` or `zstd`.
    pub fn parse(name: &str) -> Option<Codec> {
        match name {
            "gzip" => Some(Codec::Gzip),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// The archive extension before any encryption suffix: `.tar.gz` or `.tar.zst`.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Gzip => ".tar.gz",
            Codec::Zstd => ".tar.zst",
        }
    }

    /// The levels `[local] level` accepts: gzip 1-9, zstd 1-19.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Codec::Gzip => 1..=9,
            Codec::Zstd => 1..=19,
        }
    }

    /// The default level: gzip 6 (gzip's own default), zstd 3 (zstd's own default).
    pub fn default_level(self) -> u32 {
        match self {
            Codec::Gzip => 6,
            Codec::Zstd => 3,
        }
    }
}
