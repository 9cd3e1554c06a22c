//! Unit tests of `inspect`.

use super::*;

fn put(buf: &mut Vec<u8>, at: usize, data: &[u8]) {
    if buf.len() < at + data.len() {
        buf.resize(at + data.len(), 0);
    }
    buf[at..at + data.len()].copy_from_slice(data);
}

fn err(msg: &str) -> AgentError {
    AgentError::InvalidImage(msg.to_string())
}

fn fmts(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn default_permitted() -> Vec<String> {
    fmts(&["raw", "gpt", "qcow2"])
}

const GIB: u64 = 1 << 30;

/// A valid qcow2 header cluster prefix: 64 KiB clusters, 1 GiB, L1 of 2 entries.
fn qcow2(version: u32) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    put(&mut h, 0, QCOW2_MAGIC);
    put(&mut h, 4, &version.to_be_bytes());
    put(&mut h, 20, &16u32.to_be_bytes());
    put(&mut h, 24, &GIB.to_be_bytes());
    put(&mut h, 36, &2u32.to_be_bytes());
    put(&mut h, 40, &0x30000u64.to_be_bytes());
    if version == 3 {
        put(&mut h, 96, &4u32.to_be_bytes()); // refcount order
        put(&mut h, 100, &104u32.to_be_bytes());
    }
    h
}

#[test]
fn qcow2_v2_and_v3_pass() {
    for v in [2, 3] {
        let got = inspect(&qcow2(v)).expect("valid qcow2");
        assert_eq!(
            got,
            Inspection {
                format: Format::Qcow2,
                virtual_size: Some(GIB)
            }
        );
    }
}

#[test]
fn qcow2_refusals() {
    let unsafe_ = Err(err("Security: Image failed safety check"));
    let mut h = qcow2(3);
    put(&mut h, 8, &0x200u64.to_be_bytes()); // backing file
    assert_eq!(inspect(&h), unsafe_);

    let mut h = qcow2(3);
    put(&mut h, 72, &0b100u64.to_be_bytes()); // external data file bit
    assert_eq!(inspect(&h), unsafe_);

    for bit in [4u32, 5, 63] {
        let mut h = qcow2(3);
        put(&mut h, 72, &(1u64 << bit).to_be_bytes()); // extended L2 / unknown
        assert_eq!(inspect(&h), unsafe_, "bit {bit}");
    }

    let mut h = qcow2(3);
    put(&mut h, 72, &0b1011u64.to_be_bytes()); // dirty, corrupt, compression type: fine
    assert!(inspect(&h).is_ok());

    let mut h = qcow2(3);
    put(&mut h, 104, &QCOW2_EXT_DATA_FILE.to_be_bytes());
    put(&mut h, 108, &8u32.to_be_bytes());
    put(&mut h, 112, b"data.raw");
    assert_eq!(inspect(&h), unsafe_);

    for v in [1u32, 4] {
        let mut h = qcow2(3);
        put(&mut h, 4, &v.to_be_bytes());
        assert_eq!(inspect(&h), unsafe_, "version {v}");
    }

    let mut h = qcow2(2);
    put(&mut h, 32, &1u32.to_be_bytes()); // AES
    assert_eq!(inspect(&h), unsafe_);

    let mut h = qcow2(2);
    put(&mut h, 24, &(1u64 << 56).to_be_bytes()); // absurd virtual size
    assert_eq!(inspect(&h), unsafe_);

    let mut h = qcow2(2);
    put(&mut h, 36, &((1u32 << 22) + 1).to_be_bytes()); // L1 over qemu's limit
    assert_eq!(inspect(&h), unsafe_);

    let mut h = qcow2(2);
    put(&mut h, 36, &1u32.to_be_bytes()); // L1 too small for 1 GiB
    assert_eq!(inspect(&h), unsafe_);

    for bits in [8u32, 22] {
        let mut h = qcow2(2);
        put(&mut h, 20, &bits.to_be_bytes());
        assert_eq!(inspect(&h), unsafe_, "cluster bits {bits}");
    }

    let mut h = qcow2(3);
    put(&mut h, 100, &72u32.to_be_bytes()); // v3 header shorter than 104
    assert_eq!(inspect(&h), unsafe_);
}

#[test]
fn qcow2_header_extensions() {
    // A feature name table is harmless.
    let mut h = qcow2(3);
    put(&mut h, 104, &0x6803_f857u32.to_be_bytes());
    put(&mut h, 108, &48u32.to_be_bytes());
    assert!(inspect(&h).is_ok());
    // An extension running past the header cluster is refused, as qemu does.
    let mut h = qcow2(3);
    put(&mut h, 104, &0x6803_f857u32.to_be_bytes());
    put(&mut h, 108, &0x10000u32.to_be_bytes());
    assert_eq!(inspect(&h), Err(err(MSG_UNSAFE)));
}

#[test]
fn qcow2_truncated_after_magic() {
    let h = qcow2(3);
    for len in [8, 40, 71, 100] {
        assert_eq!(
            inspect(&h[..len]),
            Err(err("Security: Unable to safety check image")),
            "{len}"
        );
    }
    // Extensions reach the end of the data before their end marker.
    assert_eq!(inspect(&qcow2(2)[..72]), Err(err(MSG_UNABLE)));
}

fn descriptor(create_type: &str, extent: &str) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"{create_type}\"\n\n# Extent description\n{extent}\n\n\
         # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"2\"\nddb.adapterType = \"ide\"\n"
    )
}

/// A sparse VMDK head: 2048 sectors, descriptor at sector 1 (20 sectors).
fn vmdk_sparse(desc: &str, gd_offset: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512 + 20 * 512];
    put(&mut h, 0, VMDK_MAGIC);
    put(&mut h, 4, &1u32.to_le_bytes());
    put(&mut h, 12, &2048u64.to_le_bytes());
    put(&mut h, 20, &128u64.to_le_bytes());
    put(&mut h, 28, &1u64.to_le_bytes());
    put(&mut h, 36, &20u64.to_le_bytes());
    put(&mut h, 44, &512u32.to_le_bytes());
    put(&mut h, 56, &gd_offset.to_le_bytes());
    put(&mut h, 512, desc.as_bytes());
    h
}

#[test]
fn vmdk_sparse_kinds() {
    for kind in ["monolithicSparse", "streamOptimized"] {
        let h = vmdk_sparse(&descriptor(kind, "RW 2048 SPARSE \"disk.vmdk\""), 21);
        assert_eq!(
            inspect(&h),
            Ok(Inspection {
                format: Format::Vmdk,
                virtual_size: Some(2048 * 512)
            })
        );
    }
    for kind in [
        "monolithicFlat",
        "twoGbMaxExtentFlat",
        "vmfs",
        "twoGbMaxExtentSparse",
    ] {
        let h = vmdk_sparse(&descriptor(kind, "RW 2048 FLAT \"disk-flat.vmdk\" 0"), 21);
        assert_eq!(inspect(&h), Err(err(MSG_UNSAFE)), "{kind}");
    }
}

#[test]
fn vmdk_descriptor_rules() {
    let bad_extents = [
        "RW 2048 SPARSE \"/etc/shadow\"",
        "RW 2048 SPARSE \"../x.vmdk\"",
        "RW 2048 FLAT \"other.img\" 0",
        "RW 2048 VMFS \"other.img\"",
        "something unexpected here",
        "",
    ];
    for extent in bad_extents {
        let h = vmdk_sparse(&descriptor("monolithicSparse", extent), 21);
        assert_eq!(inspect(&h), Err(err(MSG_UNSAFE)), "{extent:?}");
    }
    let no_type = vmdk_sparse("# Disk DescriptorFile\nRW 2048 SPARSE \"d.vmdk\"\n", 21);
    assert_eq!(inspect(&no_type), Err(err(MSG_UNSAFE)));
    // Descriptor anywhere but sector 1, or an unknown version.
    let mut h = vmdk_sparse(
        &descriptor("monolithicSparse", "RW 2048 SPARSE \"d.vmdk\""),
        21,
    );
    put(&mut h, 28, &2u64.to_le_bytes());
    assert_eq!(inspect(&h), Err(err(MSG_UNSAFE)));
    let mut h = vmdk_sparse(
        &descriptor("monolithicSparse", "RW 2048 SPARSE \"d.vmdk\""),
        21,
    );
    put(&mut h, 4, &4u32.to_le_bytes());
    assert_eq!(inspect(&h), Err(err(MSG_UNSAFE)));
}

#[test]
fn vmdk_text_descriptor_is_refused() {
    let text = descriptor("monolithicFlat", "RW 2048 FLAT \"/dev/sda\" 0");
    assert_eq!(inspect(text.as_bytes()), Err(err(MSG_UNSAFE)));
    let text = descriptor("monolithicSparse", "RW 2048 SPARSE \"disk.vmdk\"");
    assert_eq!(inspect(text.as_bytes()), Err(err(MSG_UNSAFE)));
    let found = check(text.as_bytes(), None, &[], false).expect("non-deep detects");
    assert_eq!(found.format, Format::Vmdk);
    // Text without a createType is just raw.
    let plain = "hello, this is not a disk image at all\n".repeat(20);
    assert_eq!(inspect(plain.as_bytes()).map(|i| i.format), Ok(Format::Raw));
}

#[test]
fn vmdk_truncated() {
    let h = vmdk_sparse(
        &descriptor("monolithicSparse", "RW 2048 SPARSE \"d.vmdk\""),
        21,
    );
    assert_eq!(inspect(&h[..40]), Err(err(MSG_UNABLE)));
    // The data ends inside the descriptor, before its NUL padding.
    assert_eq!(inspect(&h[..600]), Err(err(MSG_UNABLE)));
}

/// A whole streamOptimized image whose grain directory is given by the footer.
fn vmdk_with_footer(footer_desc_sector: u64) -> Vec<u8> {
    let mut img = vmdk_sparse(
        &descriptor("streamOptimized", "RW 2048 SPARSE \"d.vmdk\""),
        VMDK_GD_AT_END,
    );
    img.resize(64 * 512, 0); // some grains
    let mut marker = vec![0u8; 512];
    put(&mut marker, 0, &1u64.to_le_bytes());
    put(&mut marker, 12, &VMDK_MARKER_FOOTER.to_le_bytes());
    let mut footer = img[..512].to_vec();
    put(&mut footer, 28, &footer_desc_sector.to_le_bytes());
    put(&mut footer, 56, &40u64.to_le_bytes());
    img.extend_from_slice(&marker);
    img.extend_from_slice(&footer);
    img.extend_from_slice(&[0u8; 512]);
    img
}

#[test]
fn vmdk_footer() {
    let good = vmdk_with_footer(1);
    assert_eq!(inspect(&good).map(|i| i.format), Ok(Format::Vmdk));
    assert_eq!(check_tail(&good, &good), Ok(()));
    let bad = vmdk_with_footer(2);
    assert_eq!(inspect(&bad), Err(err(MSG_UNSAFE)));
    assert_eq!(check_tail(&bad, &bad), Err(err(MSG_UNSAFE)));
    // A long image: the head alone passes, the tail decides.
    let mut head = good[..good.len() - TAIL_LEN].to_vec();
    head.resize(INSPECT_LEN, 0);
    assert!(inspect(&head).is_ok());
    assert_eq!(check_tail(&head, &good[good.len() - TAIL_LEN..]), Ok(()));
    assert_eq!(
        check_tail(&head, &bad[bad.len() - TAIL_LEN..]),
        Err(err(MSG_UNSAFE))
    );
    assert_eq!(check_tail(&head, &[0u8; 100]), Err(err(MSG_UNABLE)));
    // Anything else needs no tail.
    assert_eq!(check_tail(&qcow2(3), &[]), Ok(()));
}

fn mbr(entries: &[(u8, u8, [u8; 3], u32)]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    for (i, &(boot, kind, chs, lba)) in entries.iter().enumerate() {
        let at = 446 + 16 * i;
        h[at] = boot;
        put(&mut h, at + 1, &chs);
        h[at + 4] = kind;
        put(&mut h, at + 8, &lba.to_le_bytes());
        put(&mut h, at + 12, &1000u32.to_le_bytes());
    }
    put(&mut h, 510, &[0x55, 0xaa]);
    h
}

fn gpt_disk() -> Vec<u8> {
    let mut h = mbr(&[(0, 0xee, [0, 2, 0], 1)]);
    put(&mut h, 512, b"EFI PART");
    h.resize(64 * 1024, 0);
    h
}

#[test]
fn gpt_and_mbr() {
    assert_eq!(
        inspect(&gpt_disk()),
        Ok(Inspection {
            format: Format::Gpt,
            virtual_size: None
        })
    );
    // oslo calls a plain MBR disk "gpt" too.
    let dos = mbr(&[(0x80, 0x83, [1, 1, 0], 2048), (0, 0x82, [0, 0, 0], 4096)]);
    assert_eq!(inspect(&dos).map(|i| i.format), Ok(Format::Gpt));
    // A FAT boot sector has the signature but is not a partition table.
    let mut fat = mbr(&[]);
    fat[0x10] = 2;
    fat[0x15] = 0xf8;
    assert_eq!(inspect(&fat).map(|i| i.format), Ok(Format::Raw));
    for bad in [
        mbr(&[(0x12, 0x83, [0, 0, 0], 2048)]), // boot flag
        mbr(&[]),                              // no partitions
        mbr(&[(0, 0xee, [0, 1, 0], 1)]),       // protective CHS
        mbr(&[(0, 0xee, [0, 2, 0], 2)]),       // protective LBA
        mbr(&[(0, 0xee, [0, 2, 0], 1), (0, 0x83, [0, 0, 0], 2048)]), // extra entry
        mbr(&[(0, 0, [0, 0, 0], 0), (0, 0xee, [0, 2, 0], 1)]), // not in slot 0
    ] {
        assert_eq!(inspect(&bad), Err(err(MSG_UNSAFE)));
    }
}

fn iso() -> Vec<u8> {
    let mut h = vec![0u8; 0x8800];
    h[0x8000] = 1;
    put(&mut h, 0x8001, b"CD001");
    h[0x8006] = 1;
    put(&mut h, 0x8050, &100u32.to_le_bytes());
    put(&mut h, 0x8054, &100u32.to_be_bytes());
    put(&mut h, 0x8080, &2048u16.to_le_bytes());
    put(&mut h, 0x8082, &2048u16.to_be_bytes());
    h
}

#[test]
fn iso_and_hybrid_iso() {
    assert_eq!(
        inspect(&iso()),
        Ok(Inspection {
            format: Format::Iso,
            virtual_size: Some(204_800)
        })
    );
    let mut hybrid = iso();
    put(&mut hybrid, 0, &mbr(&[(0x80, 0x17, [0, 1, 0], 0)]));
    assert_eq!(
        inspect(&hybrid),
        Err(err("Security: Image matched multiple potential formats"))
    );
    // Non-deep: no refusal, the ISO wins over its boot MBR.
    assert_eq!(
        check(&hybrid, None, &[], false).map(|i| i.format),
        Ok(Format::Iso)
    );
    assert_eq!(inspect(&iso()[..0x8100]), Err(err(MSG_UNABLE)));
}

#[test]
fn raw_is_the_fallback() {
    assert_eq!(
        inspect(&[]),
        Ok(Inspection {
            format: Format::Raw,
            virtual_size: None
        })
    );
    assert_eq!(
        inspect(&vec![0u8; INSPECT_LEN]).map(|i| i.format),
        Ok(Format::Raw)
    );
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(inspect(&noise).map(|i| i.format), Ok(Format::Raw));
}

#[test]
fn detect_only_formats() {
    let mut vhd = vec![0u8; 512];
    put(&mut vhd, 0, b"conectix");
    put(&mut vhd, 40, &GIB.to_be_bytes());
    assert_eq!(
        inspect(&vhd),
        Ok(Inspection {
            format: Format::Vhd,
            virtual_size: Some(GIB)
        })
    );
    assert_eq!(inspect(&vhd[..100]), Err(err(MSG_UNABLE)));

    let mut vhdx = vec![0u8; 4096];
    put(&mut vhdx, 0, b"vhdxfile");
    assert_eq!(inspect(&vhdx).map(|i| i.format), Ok(Format::Vhdx));

    let mut vdi = vec![0u8; 512];
    put(&mut vdi, 0, b"<<< Oracle VM VirtualBox Disk Image >>>\n");
    put(&mut vdi, 0x40, &0xbeda_107fu32.to_le_bytes());
    put(&mut vdi, 0x170, &GIB.to_le_bytes());
    assert_eq!(
        inspect(&vdi),
        Ok(Inspection {
            format: Format::Vdi,
            virtual_size: Some(GIB)
        })
    );

    let mut qed = vec![0u8; 512];
    put(&mut qed, 0, b"QED\0");
    assert_eq!(inspect(&qed), Err(err(MSG_UNSAFE)));

    let mut luks = vec![0u8; 1024];
    put(&mut luks, 0, b"LUKS\xba\xbe");
    put(&mut luks, 6, &1u16.to_be_bytes());
    assert_eq!(inspect(&luks).map(|i| i.format), Ok(Format::Luks));
    put(&mut luks, 6, &2u16.to_be_bytes());
    assert_eq!(inspect(&luks), Err(err(MSG_UNSAFE)));
}

#[test]
fn permitted_list() {
    let h = vmdk_sparse(
        &descriptor("monolithicSparse", "RW 2048 SPARSE \"d.vmdk\""),
        21,
    );
    assert_eq!(
        check(&h, None, &default_permitted(), true),
        Err(err(
            "Security: Detected image format was vmdk, but only raw, gpt, qcow2 are allowed"
        ))
    );
    assert_eq!(
        check(&h, Some("vmdk"), &fmts(&["vmdk"]), true).map(|i| i.format),
        Ok(Format::Vmdk)
    );
    // The permitted list is checked before the declared format, as in IPA.
    assert_eq!(
        check(&iso(), Some("qcow2"), &fmts(&["qcow2"]), true),
        Err(err(
            "Security: Detected image format was iso, but only qcow2 are allowed"
        ))
    );
}

#[test]
fn declared_format() {
    let permitted = default_permitted();
    assert_eq!(
        check(&[0u8; 4096], Some("qcow2"), &permitted, true),
        Err(err(
            "Security: Expected format was qcow2, but image was actually raw"
        ))
    );
    assert_eq!(
        check(&gpt_disk(), Some("qcow2"), &permitted, true),
        Err(err(
            "Security: Expected format was qcow2, but image was actually gpt"
        ))
    );
    for unset in [None, Some(""), Some("unknown")] {
        assert_eq!(
            check(&qcow2(3), unset, &permitted, true).map(|i| i.format),
            Ok(Format::Qcow2)
        );
    }
    assert_eq!(
        check(&qcow2(3), Some("qcow2"), &permitted, true).map(|i| i.format),
        Ok(Format::Qcow2)
    );
}

#[test]
fn raw_or_gpt_declared_is_written_raw_unless_it_is_a_container_format() {
    // Unsafe to inspect further, but written as raw bytes it is harmless.
    let mut backing = qcow2(3);
    put(&mut backing, 8, &0x200u64.to_be_bytes());
    let raw = Inspection {
        format: Format::Raw,
        virtual_size: None,
    };
    assert_eq!(
        check(&backing, Some("raw"), &default_permitted(), true),
        Ok(raw)
    );
    assert_eq!(
        check(&qcow2(3), Some("raw"), &default_permitted(), true),
        Err(err(
            "Security: Expected format was raw, but image was actually qcow2"
        ))
    );
    assert_eq!(check(&iso(), Some("raw"), &[], true), Ok(raw));
    assert_eq!(
        check(&[0u8; 512], Some("gpt"), &[], true).map(|i| i.format),
        Ok(Format::Gpt)
    );
}

#[test]
fn not_deep_detects_but_checks_nothing() {
    let mut backing = qcow2(3);
    put(&mut backing, 8, &0x200u64.to_be_bytes());
    let got = check(&backing, Some("raw"), &default_permitted(), false).expect("not deep");
    assert_eq!(
        got,
        Inspection {
            format: Format::Qcow2,
            virtual_size: Some(GIB)
        }
    );
    let mut vdi = vec![0u8; 512];
    put(&mut vdi, 0x40, &0xbeda_107fu32.to_le_bytes());
    assert_eq!(
        check(&vdi, Some("qcow2"), &default_permitted(), false).map(|i| i.format),
        Ok(Format::Vdi)
    );
    assert_eq!(
        check(&[1u8; 100], None, &[], false).map(|i| i.format),
        Ok(Format::Raw)
    );
}

#[test]
fn names_round_trip() {
    for f in Format::ALL {
        assert_eq!(Format::from_name(f.name()), Some(f));
        assert_eq!(f.to_string(), f.name());
    }
    assert_eq!(Format::from_name("vpc"), None);
    assert_eq!(Format::from_name("QCOW2"), None);
}
