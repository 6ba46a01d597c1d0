//! Generated protobuf messages, gRPC clients and servers for the Sales
//! Milestones contracts (`proto/`), plus the encoded descriptor set that
//! servers register for reflection.
//!
//! The module tree mirrors the protobuf packages:
//! `milestones::goal::v1`, `milestones::progress::v1`,
//! `milestones::recognition::v1`, and the vendored `google::type`.

#![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]

/// The encoded `FileDescriptorSet` of every file in `proto/`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/milestones_descriptor.bin"));

pub mod google {
    pub mod r#type {
        include!(concat!(env!("OUT_DIR"), "/google.r#type.rs"));
    }
}

pub mod milestones {
    pub mod goal {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/milestones.goal.v1.rs"));
        }
    }
    pub mod progress {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/milestones.progress.v1.rs"));
        }
    }
    pub mod recognition {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/milestones.recognition.v1.rs"));
        }
    }
}

pub use google::r#type::Date;
pub use milestones::goal::v1 as goal;
pub use milestones::progress::v1 as progress;
pub use milestones::recognition::v1 as recognition;
