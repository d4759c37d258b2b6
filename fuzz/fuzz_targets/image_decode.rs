//! Image decoding (every format) + the whole Idefics3 image processor, and raw RGB/RGBA buffers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smolcap::processor::image::{
    preprocess, DecodeLimits, ImageProcessorConfig, RawLayout, SourceImage,
};

fuzz_target!(|data: &[u8]| {
    // Small limits keep each run fast; the checks are the same at any size.
    let lim = DecodeLimits {
        max_pixels: 1 << 20,
        max_encoded_bytes: 1 << 20,
    };
    let cfg = ImageProcessorConfig {
        size_longest_edge: 96,
        max_image_size: 32,
        ..ImageProcessorConfig::default()
    };
    if data.first() == Some(&b'R') && data.len() > 8 {
        // Raw buffer: width, height, stride from the first bytes.
        let w = u32::from(data[1]) + 1;
        let h = u32::from(data[2]) + 1;
        let stride = usize::from(u16::from_le_bytes([data[3], data[4]]));
        let layout = if data[5] & 1 == 0 {
            RawLayout::Rgb8
        } else {
            RawLayout::Rgba8
        };
        if let Ok(img) = SourceImage::from_raw(&data[6..], w, h, stride, layout, &lim) {
            let _ = preprocess(&img, &cfg, None);
        }
        return;
    }
    if let Ok(img) = SourceImage::decode(data, &lim) {
        assert!(img.width() > 0 && img.height() > 0);
        assert_eq!(
            img.data().len(),
            img.width() * img.height() * img.channels()
        );
        let _ = preprocess(&img, &cfg, None);
        let no_split = ImageProcessorConfig {
            do_image_splitting: false,
            ..cfg
        };
        let _ = preprocess(&img, &no_split, Some(48));
    }
});
