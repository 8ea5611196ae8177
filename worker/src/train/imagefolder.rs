//! Reads an image-folder dataset: a directory with `train/` and optionally `val/` and `test/`,
//! each holding one folder of PNG or JPEG images per class.

use std::fs;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::ImageReader;
use tch::{Kind, Tensor};

use super::formats::{error, hold_out, FormatError, RawSplit, RawSplits, HOLD_OUT_FRACTION};

/// The file extensions read as images, compared without regard to case.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Reads the image folder at `dir`. The sorted class folders of `train/` give the label ids, and
/// `val/` and `test/` may lack a class but not add one. Images are converted to RGB, resized to
/// `image_size` x `image_size` pixels with a triangle (bilinear) filter and scaled to [0, 1].
/// Without `test/`, a tenth of the training images becomes the test split. Without `val/`, a
/// tenth of the remaining training images becomes the validation split.
pub fn read_image_folder(dir: &Path, image_size: u32) -> Result<RawSplits, FormatError> {
    let train_dir = dir.join("train");
    if !train_dir.is_dir() {
        return Err(error(
            dir,
            "missing train/ directory: expected train/ and optionally val/ and test/, each with \
             one folder per class",
        ));
    }
    let classes = class_folders(&train_dir)?;
    if classes.is_empty() {
        return Err(error(
            &train_dir,
            "missing class folders: expected one folder of PNG or JPEG images per class",
        ));
    }
    let read_optional = |name: &str| -> Result<Option<RawSplit>, FormatError> {
        let split_dir = dir.join(name);
        if !split_dir.is_dir() {
            return Ok(None);
        }
        read_split(&split_dir, &classes, image_size).map(Some)
    };

    let train = read_split(&train_dir, &classes, image_size)?;
    let (train, test) = match read_optional("test")? {
        Some(test) => (train, test),
        None => hold_out(&train_dir, train, HOLD_OUT_FRACTION)?,
    };
    let (train, val) = match read_optional("val")? {
        Some(val) => (train, val),
        None => hold_out(&train_dir, train, HOLD_OUT_FRACTION)?,
    };
    Ok(RawSplits { train, val, test })
}

/// Lists the class folders of one split, sorted by name. Hidden entries are skipped, and any
/// other file is an error.
fn class_folders(split_dir: &Path) -> Result<Vec<String>, FormatError> {
    let mut classes = Vec::new();
    for path in visible_entries(split_dir)? {
        if !path.is_dir() {
            return Err(error(
                &path,
                "unexpected file: expected only class folders in the split directory",
            ));
        }
        classes.push(file_name(&path));
    }
    classes.sort();
    Ok(classes)
}

/// Reads every image of one split, labelled by its class folder's index in `classes`.
fn read_split(
    split_dir: &Path,
    classes: &[String],
    image_size: u32,
) -> Result<RawSplit, FormatError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for class in class_folders(split_dir)? {
        let class_dir = split_dir.join(&class);
        let Some(label) = classes.iter().position(|known| *known == class) else {
            return Err(error(
                &class_dir,
                format!("class {class:?} is not a class folder of train/, which has {classes:?}"),
            ));
        };
        let images = image_files(&class_dir)?;
        if images.is_empty() {
            return Err(error(
                &class_dir,
                "empty class folder: expected PNG or JPEG images, or remove the folder",
            ));
        }
        for path in images {
            pixels.extend(decode(&path, image_size)?);
            labels.push(label as i64);
        }
    }
    let side = i64::from(image_size);
    let num_images = labels.len() as i64;
    let x = Tensor::from_slice(&pixels)
        .view([num_images, side, side, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 255.0;
    Ok((x, Tensor::from_slice(&labels)))
}

/// Lists the image files of a class folder, sorted by name so that the row order is stable.
fn image_files(class_dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let mut images = visible_entries(class_dir)?;
    for path in &images {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let is_image = extension.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()));
        if !path.is_file() || !is_image {
            return Err(error(
                path,
                "unexpected entry: expected PNG or JPEG images (.png, .jpg, .jpeg)",
            ));
        }
    }
    images.sort();
    Ok(images)
}

/// Decodes one image, converts it to RGB and resizes it, returning height x width x 3 bytes.
fn decode(path: &Path, image_size: u32) -> Result<Vec<u8>, FormatError> {
    let decoded = ImageReader::open(path)
        .map_err(|err| error(path, format!("failed to open: {err}")))?
        .with_guessed_format()
        .map_err(|err| error(path, format!("failed to read: {err}")))?
        .decode()
        .map_err(|err| error(path, format!("failed to decode the image: {err}")))?;
    let rgb = decoded.into_rgb8();
    if rgb.dimensions() == (image_size, image_size) {
        return Ok(rgb.into_raw());
    }
    let resized = image::imageops::resize(&rgb, image_size, image_size, FilterType::Triangle);
    Ok(resized.into_raw())
}

/// Lists the entries of a directory whose names do not start with a dot.
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let entries = fs::read_dir(dir).map_err(|err| error(dir, format!("failed to list: {err}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|err| error(dir, format!("failed to list: {err}")))?
            .path();
        if !file_name(&path).starts_with('.') {
            paths.push(path);
        }
    }
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, Luma, Rgb, RgbImage};

    use super::*;

    /// Writes an 8 x 8 PNG of one colour at `dir/split/class/name`.
    fn write_png(dir: &Path, split: &str, class: &str, name: &str, colour: [u8; 3]) -> PathBuf {
        let class_dir = dir.join(split).join(class);
        fs::create_dir_all(&class_dir).unwrap();
        let path = class_dir.join(name);
        RgbImage::from_pixel(8, 8, Rgb(colour)).save(&path).unwrap();
        path
    }

    /// Writes `num_images` PNGs per class to `split`; image i of class c has red value c and
    /// green value i.
    fn write_split(dir: &Path, split: &str, classes: &[&str], num_images: u8) {
        for (label, class) in classes.iter().enumerate() {
            for i in 0..num_images {
                write_png(
                    dir,
                    split,
                    class,
                    &format!("{i}.png"),
                    [label as u8, i, 200],
                );
            }
        }
    }

    fn read_error(dir: &Path) -> (PathBuf, String) {
        let err = read_image_folder(dir, 8).err().unwrap();
        (err.path, err.detail)
    }

    /// Scales the values of `tensor` from [0, 1] back to bytes, which is exact for float32.
    fn bytes(tensor: &Tensor) -> Vec<i64> {
        let scaled = (tensor * 255.0).round().to_kind(Kind::Int64).flatten(0, -1);
        Vec::<i64>::try_from(&scaled).unwrap()
    }

    fn labels(split: &RawSplit) -> Vec<i64> {
        Vec::<i64>::try_from(&split.1).unwrap()
    }

    #[test]
    fn image_folder_reads_labels_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["dog", "cat"], 3);
        write_split(dir.path(), "val", &["cat", "dog"], 1);
        write_split(dir.path(), "test", &["dog"], 2);
        let splits = read_image_folder(dir.path(), 8).unwrap();

        assert_eq!(splits.train.0.size(), vec![6, 3, 8, 8]);
        assert_eq!(splits.train.0.kind(), Kind::Float);
        // Classes sort alphabetically: cat is 0 and dog is 1 in every split.
        assert_eq!(labels(&splits.train), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(labels(&splits.val), vec![0, 1]);
        assert_eq!(labels(&splits.test), vec![1, 1]);
        // Row 4 is dog's image 1: red 0 (dog was written first), green 1, blue 200.
        let row = splits.train.0.get(4);
        assert_eq!(bytes(&row.get(0)), vec![0; 64]);
        assert_eq!(bytes(&row.get(1)), vec![1; 64]);
        assert_eq!(bytes(&row.get(2)), vec![200; 64]);
        let max = splits.train.0.max().double_value(&[]);
        assert!((max - 200.0 / 255.0).abs() < 1e-6, "{max}");
    }

    #[test]
    fn image_folder_resizes_and_converts_to_rgb() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["a"], 2);
        let gray_dir = dir.path().join("train/b");
        fs::create_dir_all(&gray_dir).unwrap();
        let gray = GrayImage::from_fn(10, 6, |_, _| Luma([51]));
        gray.save(gray_dir.join("gray.png")).unwrap();
        gray.save(gray_dir.join("gray.jpg")).unwrap();
        write_split(dir.path(), "val", &["a"], 1);
        write_split(dir.path(), "test", &["a"], 1);
        let splits = read_image_folder(dir.path(), 4).unwrap();

        assert_eq!(splits.train.0.size(), vec![4, 3, 4, 4]);
        assert_eq!(labels(&splits.train), vec![0, 0, 1, 1]);
        // A uniform image stays uniform through the filter; the lossless PNG keeps 51 exactly.
        assert_eq!(bytes(&splits.train.0.get(3)), vec![51; 48]);
        let jpeg = bytes(&splits.train.0.get(2));
        assert!(jpeg.iter().all(|v| (v - 51).abs() <= 2), "{jpeg:?}");
    }

    #[test]
    fn image_folder_holds_out_missing_splits() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["a", "b"], 10);
        let splits = read_image_folder(dir.path(), 8).unwrap();
        // A tenth of 20 images is the test split, then a tenth of the other 18 the val split.
        assert_eq!(splits.test.1.size(), vec![2]);
        assert_eq!(splits.val.1.size(), vec![2]);
        assert_eq!(splits.train.1.size(), vec![16]);
    }

    #[test]
    fn image_folder_holds_out_val_only() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["a", "b"], 10);
        write_split(dir.path(), "test", &["a", "b"], 1);
        let splits = read_image_folder(dir.path(), 8).unwrap();
        assert_eq!(splits.test.1.size(), vec![2]);
        assert_eq!(splits.val.1.size(), vec![2]);
        assert_eq!(splits.train.1.size(), vec![18]);
    }

    #[test]
    fn image_folder_rejects_missing_train() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "val", &["a"], 1);
        assert_eq!(
            read_error(dir.path()),
            (
                dir.path().to_path_buf(),
                "missing train/ directory: expected train/ and optionally val/ and test/, each \
                 with one folder per class"
                    .to_string()
            )
        );
    }

    #[test]
    fn image_folder_rejects_no_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("train/.cache")).unwrap();
        assert_eq!(
            read_error(dir.path()),
            (
                dir.path().join("train"),
                "missing class folders: expected one folder of PNG or JPEG images per class"
                    .to_string()
            )
        );
    }

    #[test]
    fn image_folder_rejects_empty_class_folder() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["a"], 2);
        fs::create_dir_all(dir.path().join("train/b")).unwrap();
        assert_eq!(
            read_error(dir.path()),
            (
                dir.path().join("train/b"),
                "empty class folder: expected PNG or JPEG images, or remove the folder".to_string()
            )
        );
    }

    #[test]
    fn image_folder_rejects_unknown_class() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["cat", "dog"], 2);
        write_split(dir.path(), "test", &["cat", "emu"], 1);
        assert_eq!(
            read_error(dir.path()),
            (
                dir.path().join("test/emu"),
                "class \"emu\" is not a class folder of train/, which has [\"cat\", \"dog\"]"
                    .to_string()
            )
        );
    }

    #[test]
    fn image_folder_rejects_undecodable_image() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["a"], 2);
        let path = dir.path().join("train/a/2.png");
        fs::write(&path, b"not an image").unwrap();
        let (err_path, detail) = read_error(dir.path());
        assert_eq!(err_path, path);
        assert!(
            detail.starts_with("failed to decode the image: "),
            "{detail}"
        );
    }

    #[test]
    fn image_folder_rejects_other_files() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["a"], 2);
        let path = dir.path().join("train/a/notes.txt");
        fs::write(&path, b"x").unwrap();
        assert_eq!(
            read_error(dir.path()),
            (
                path,
                "unexpected entry: expected PNG or JPEG images (.png, .jpg, .jpeg)".to_string()
            )
        );
    }

    #[test]
    fn image_folder_rejects_loose_file() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &["a"], 2);
        let path = dir.path().join("train/labels.csv");
        fs::write(&path, b"x").unwrap();
        assert_eq!(
            read_error(dir.path()),
            (
                path,
                "unexpected file: expected only class folders in the split directory".to_string()
            )
        );
    }
}
