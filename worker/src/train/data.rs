//! Loads and validates a dataset in one of the formats `docs/data.md` describes: an `.npz`
//! archive with the arrays `train_x`, `train_y`, `val_x`, `val_y`, `test_x` and `test_y`,
//! CIFAR-10 binary batches, MNIST idx files, CSV tables or an image folder.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::formats::{self, RawSplits, CIFAR_MEAN, CIFAR_STD};
use super::imagefolder;
use super::TrainError;

/// Dataset formats the trainer reads.
pub const FORMATS: &[&str] = &["npz", "cifar10", "mnist", "csv", "imagefolder"];
/// The formats whose rows are images, which `normalize` applies to.
const IMAGE_FORMATS: &[&str] = &["cifar10", "mnist", "imagefolder"];
/// The side in pixels that image-folder images are resized to when `image_size` is unset.
pub const DEFAULT_IMAGE_SIZE: u32 = 32;

/// The array names of a dataset file, in the order they are checked.
const ARRAY_NAMES: [&str; 6] = ["train_x", "train_y", "val_x", "val_y", "test_x", "test_y"];

/// The inputs and labels of one split, on the training device.
#[derive(Debug)]
pub(super) struct Split {
    /// Inputs, `rows x features...`, float32.
    pub x: Tensor,
    /// Class ids, `rows`, int64.
    pub y: Tensor,
}

impl Split {
    pub fn num_rows(&self) -> i64 {
        self.y.size()[0]
    }
}

/// A validated dataset: three non-empty splits whose rows share one shape.
#[derive(Debug)]
pub(super) struct Dataset {
    pub path: PathBuf,
    pub train: Split,
    pub val: Split,
    pub test: Split,
    /// The shape of one input row, e.g. `[1, 8, 8]` for images or `[64]` for flat features.
    pub row_shape: Vec<i64>,
    /// The largest label over all splits plus one.
    pub num_classes: i64,
}

/// How to read a dataset.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataOptions {
    /// One of [`FORMATS`]; `None` infers it from the path.
    pub format: Option<String>,
    /// The CSV column of the labels; `None` means "label".
    pub label_column: Option<String>,
    /// The side in pixels that image-folder images are resized to; `None` means
    /// [`DEFAULT_IMAGE_SIZE`].
    pub image_size: Option<u32>,
    /// The per-channel normalisation of an image format; `None` keeps the format's default:
    /// CIFAR-10's own mean and standard deviation, none for the others.
    pub normalize: Option<Normalize>,
}

/// Per-channel normalisation: each channel's pixels, scaled to [0, 1], become
/// `(pixel - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    /// One value per channel.
    pub mean: Vec<f64>,
    /// One value per channel, each > 0.
    pub std: Vec<f64>,
}

impl Normalize {
    /// Returns CIFAR-10's per-channel mean and standard deviation.
    pub fn cifar10() -> Self {
        Normalize {
            mean: CIFAR_MEAN.to_vec(),
            std: CIFAR_STD.to_vec(),
        }
    }
}

/// Infers the format of the dataset at `path`: by the extension of a file, or by the files a
/// directory contains.
pub fn infer_format(path: &Path) -> Result<&'static str, TrainError> {
    let invalid = |detail: String| TrainError::Dataset {
        path: path.to_path_buf(),
        detail,
    };
    if path.is_dir() {
        let has = |name: &str| path.join(name).is_file();
        if has("test_batch.bin") || has("data_batch_1.bin") {
            return Ok("cifar10");
        }
        if has("train-images-idx3-ubyte") || has("train-images-idx3-ubyte.gz") {
            return Ok("mnist");
        }
        if has("train.csv") {
            return Ok("csv");
        }
        if path.join("train").is_dir() {
            return Ok("imagefolder");
        }
        return Err(invalid(
            "cannot infer the format of this directory: expected CIFAR-10 batches \
             (data_batch_1.bin, test_batch.bin), MNIST idx files (train-images-idx3-ubyte), \
             train.csv and test.csv or an image folder (train/ with one folder per class); set \
             task.format"
                .to_string(),
        ));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => Ok("npz"),
        Some("csv") => Ok("csv"),
        _ if !path.exists() => Err(invalid("no such file or directory".to_string())),
        _ => Err(invalid(
            "cannot infer the format from the file name: expected a .npz or .csv file or a \
             directory; set task.format"
                .to_string(),
        )),
    }
}

impl Dataset {
    /// Reads the dataset at `path`, validates every split and moves the splits to `device`.
    pub fn load(path: &Path, options: &DataOptions, device: Device) -> Result<Self, TrainError> {
        let format = match options.format.as_deref() {
            Some(format) => format,
            None => infer_format(path)?,
        };
        let label_column = options.label_column.as_deref().unwrap_or("label");
        let normalize = options.normalize.as_ref();
        if let Some(normalize) = normalize {
            check_normalize(path, format, normalize)?;
        }
        let image_size = options.image_size.unwrap_or(DEFAULT_IMAGE_SIZE);
        let raw = match format {
            "npz" => read_npz(path),
            "cifar10" => {
                let normalize = normalize.cloned().unwrap_or_else(Normalize::cifar10);
                formats::read_cifar10(path, &normalize).map_err(format_error)
            }
            "mnist" => formats::read_mnist(path).map_err(format_error),
            "csv" => formats::read_csv(path, label_column).map_err(format_error),
            "imagefolder" => imagefolder::read_image_folder(path, image_size).map_err(format_error),
            other => Err(TrainError::Dataset {
                path: path.to_path_buf(),
                detail: format!(
                    "unknown format {other:?}: expected one of \"npz\", \"cifar10\", \
                     \"mnist\", \"csv\", \"imagefolder\""
                ),
            }),
        }?;
        let raw = match normalize {
            Some(normalize) if format != "cifar10" => normalise_splits(path, raw, normalize)?,
            _ => raw,
        };
        Self::from_splits(path, raw, device)
    }

    fn from_splits(path: &Path, raw: RawSplits, device: Device) -> Result<Self, TrainError> {
        let invalid = |detail: String| TrainError::Dataset {
            path: path.to_path_buf(),
            detail,
        };
        let splits = [
            ("train", raw.train.0, raw.train.1),
            ("val", raw.val.0, raw.val.1),
            ("test", raw.test.0, raw.test.1),
        ];

        for (name, x, y) in &splits {
            check_split(name, x, y).map_err(invalid)?;
        }
        let row_shape = splits[0].1.size()[1..].to_vec();
        for (name, x, _) in &splits[1..] {
            let split_row_shape = &x.size()[1..];
            if split_row_shape != row_shape.as_slice() {
                return Err(invalid(format!(
                    "{name}_x has rows of shape {split_row_shape:?} but train_x has \
                     {row_shape:?}"
                )));
            }
        }
        let mut num_classes = 0;
        for (_, _, y) in &splits {
            num_classes = num_classes.max(y.f_max()?.f_int64_value(&[])? + 1);
        }

        let [train, val, test] = splits.map(|(_, x, y)| (x, y));
        let to_device = |(x, y): (Tensor, Tensor)| -> Result<Split, TrainError> {
            Ok(Split {
                x: x.f_to_device(device)?,
                y: y.f_to_device(device)?,
            })
        };
        Ok(Dataset {
            path: path.to_path_buf(),
            train: to_device(train)?,
            val: to_device(val)?,
            test: to_device(test)?,
            row_shape,
            num_classes,
        })
    }

    /// Checks that the rows fit `model`: "cnn" needs images of at least 2 x 2 pixels, the
    /// ResNets need images of 1 or 3 channels, and "mlp" and "torchscript" take any row shape.
    pub fn check_input_for(&self, model: &str) -> Result<(), TrainError> {
        if model.starts_with("resnet") {
            return self.check_resnet_input(model);
        }
        if model != "cnn" {
            return Ok(());
        }
        let detail = match self.row_shape.as_slice() {
            [_, height, width] if *height >= 2 && *width >= 2 => return Ok(()),
            [_, height, width] => format!(
                "model \"cnn\" needs images of at least 2 x 2 pixels, got {height} x {width}"
            ),
            _ => format!(
                "model \"cnn\" needs 4-D x (rows x channels x height x width), got train_x \
                 of shape {:?}; use model \"mlp\" for flat features",
                self.train.x.size()
            ),
        };
        Err(TrainError::Dataset {
            path: self.path.clone(),
            detail,
        })
    }
}

impl Dataset {
    fn check_resnet_input(&self, model: &str) -> Result<(), TrainError> {
        let detail = match self.row_shape.as_slice() {
            [1 | 3, _, _] => return Ok(()),
            [channels, _, _] => {
                format!("model {model:?} needs images of 1 or 3 channels, got {channels} channels")
            }
            _ => format!(
                "model {model:?} needs 4-D x (rows x channels x height x width), got train_x \
                 of shape {:?}",
                self.train.x.size()
            ),
        };
        Err(TrainError::Dataset {
            path: self.path.clone(),
            detail,
        })
    }
}

/// Checks that `normalize` fits `format` before the dataset is read.
fn check_normalize(path: &Path, format: &str, normalize: &Normalize) -> Result<(), TrainError> {
    let invalid = |detail: String| TrainError::Dataset {
        path: path.to_path_buf(),
        detail,
    };
    if !IMAGE_FORMATS.contains(&format) {
        return Err(invalid(format!(
            "normalize_mean and normalize_std apply only to the image formats \"cifar10\", \
             \"mnist\" and \"imagefolder\", got format {format:?}"
        )));
    }
    if normalize.mean.len() != normalize.std.len() {
        return Err(invalid(format!(
            "normalize_mean has {} but normalize_std has {}",
            count(normalize.mean.len() as i64, "value"),
            count(normalize.std.len() as i64, "value")
        )));
    }
    // NaN fails `is_finite`, so it is rejected too.
    let is_valid = |std: f64| std.is_finite() && std > 0.0;
    if let Some(std) = normalize.std.iter().find(|std| !is_valid(**std)) {
        return Err(invalid(format!(
            "normalize_std contains {std}, expected values > 0"
        )));
    }
    Ok(())
}

/// Normalises every split's images, whose channel count must match `normalize`.
fn normalise_splits(
    path: &Path,
    raw: RawSplits,
    normalize: &Normalize,
) -> Result<RawSplits, TrainError> {
    let num_channels = raw.train.0.size().get(1).copied().unwrap_or(0);
    if num_channels != normalize.mean.len() as i64 {
        return Err(TrainError::Dataset {
            path: path.to_path_buf(),
            detail: format!(
                "normalize_mean has {} but the images have {}",
                count(normalize.mean.len() as i64, "value"),
                count(num_channels, "channel")
            ),
        });
    }
    let apply =
        |(x, y): (Tensor, Tensor)| (formats::normalise(&x, &normalize.mean, &normalize.std), y);
    Ok(RawSplits {
        train: apply(raw.train),
        val: apply(raw.val),
        test: apply(raw.test),
    })
}

/// Writes `number` with `noun`, plural unless the number is 1.
fn count(number: i64, noun: &str) -> String {
    if number == 1 {
        format!("1 {noun}")
    } else {
        format!("{number} {noun}s")
    }
}

fn format_error(err: formats::FormatError) -> TrainError {
    TrainError::Dataset {
        path: err.path,
        detail: err.detail,
    }
}

/// Reads the six arrays of an npz archive.
fn read_npz(path: &Path) -> Result<RawSplits, TrainError> {
    let invalid = |detail: String| TrainError::Dataset {
        path: path.to_path_buf(),
        detail,
    };
    let mut arrays = Tensor::read_npz(path)
        .map_err(|err| invalid(format!("failed to read the npz archive: {err}")))?;
    let mut take = |name: &str| -> Result<Tensor, TrainError> {
        let position = arrays.iter().position(|(array_name, _)| array_name == name);
        match position {
            Some(index) => Ok(arrays.swap_remove(index).1),
            None => Err(invalid(format!("missing array {name:?}"))),
        }
    };
    let [train_x, train_y, val_x, val_y, test_x, test_y] = ARRAY_NAMES.map(&mut take);
    Ok(RawSplits {
        train: (train_x?, train_y?),
        val: (val_x?, val_y?),
        test: (test_x?, test_y?),
    })
}

/// Checks one split's dtypes, shapes and labels, returning what is wrong.
fn check_split(name: &str, x: &Tensor, y: &Tensor) -> Result<(), String> {
    let x_kind = x.kind();
    if x_kind != Kind::Float {
        return Err(format!(
            "{name}_x has dtype {}, expected float32",
            numpy_dtype(x_kind)
        ));
    }
    let y_kind = y.kind();
    if y_kind != Kind::Int64 {
        return Err(format!(
            "{name}_y has dtype {}, expected int64",
            numpy_dtype(y_kind)
        ));
    }

    let x_shape = x.size();
    let y_shape = y.size();
    if x_shape.len() < 2 {
        return Err(format!(
            "{name}_x has shape {x_shape:?}, expected rows x features or rows x channels x \
             height x width"
        ));
    }
    if y_shape.len() != 1 {
        return Err(format!("{name}_y has shape {y_shape:?}, expected 1-D"));
    }
    if x_shape[0] != y_shape[0] {
        return Err(format!(
            "{name}_x has {} rows but {name}_y has {}",
            x_shape[0], y_shape[0]
        ));
    }
    if y_shape[0] == 0 {
        return Err(format!("{name} split is empty"));
    }
    if x_shape[1..].contains(&0) {
        return Err(format!(
            "{name}_x has shape {x_shape:?}, expected every row to contain values"
        ));
    }

    if !all_finite(x) {
        return Err(format!("{name}_x contains NaN or infinite values"));
    }
    let min_label = y.min().int64_value(&[]);
    if min_label < 0 {
        return Err(format!(
            "{name}_y contains label {min_label}, expected class ids >= 0"
        ));
    }
    Ok(())
}

fn all_finite(x: &Tensor) -> bool {
    x.isfinite().all().int64_value(&[]) == 1
}

/// Names a tensor kind the way numpy names the dtype, so messages match what the user saved.
fn numpy_dtype(kind: Kind) -> String {
    let name = match kind {
        Kind::Uint8 => "uint8",
        Kind::Int8 => "int8",
        Kind::Int16 => "int16",
        Kind::Int => "int32",
        Kind::Int64 => "int64",
        Kind::Half => "float16",
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Bool => "bool",
        Kind::ComplexFloat => "complex64",
        Kind::ComplexDouble => "complex128",
        other => return format!("{other:?}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(rows: i64) -> Tensor {
        Tensor::zeros([rows, 1, 4, 4], (Kind::Float, Device::Cpu))
    }

    fn labels(rows: i64) -> Tensor {
        Tensor::arange(rows, (Kind::Int64, Device::Cpu)).remainder(3)
    }

    fn valid_arrays() -> Vec<(&'static str, Tensor)> {
        vec![
            ("train_x", images(6)),
            ("train_y", labels(6)),
            ("val_x", images(3)),
            ("val_y", labels(3)),
            ("test_x", images(3)),
            ("test_y", labels(3)),
        ]
    }

    fn replaced(name: &str, array: Tensor) -> Vec<(&'static str, Tensor)> {
        let mut arrays = valid_arrays();
        let slot = arrays.iter_mut().find(|(n, _)| *n == name).unwrap();
        slot.1 = array;
        arrays
    }

    /// Writes `arrays` to a temporary npz file and loads it, returning the error detail.
    fn load_error(arrays: &[(&str, Tensor)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.npz");
        Tensor::write_npz(arrays, &path).unwrap();
        match Dataset::load(&path, &DataOptions::default(), Device::Cpu) {
            Err(TrainError::Dataset {
                path: err_path,
                detail,
            }) => {
                assert_eq!(err_path, path);
                detail
            }
            other => panic!("expected a dataset error, got {other:?}"),
        }
    }

    fn load(arrays: &[(&str, Tensor)]) -> Dataset {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.npz");
        Tensor::write_npz(arrays, &path).unwrap();
        Dataset::load(&path, &DataOptions::default(), Device::Cpu).unwrap()
    }

    #[test]
    fn load_reads_valid_arrays() {
        let dataset = load(&valid_arrays());
        assert_eq!(dataset.train.num_rows(), 6);
        assert_eq!(dataset.val.num_rows(), 3);
        assert_eq!(dataset.test.num_rows(), 3);
        assert_eq!(dataset.row_shape, vec![1, 4, 4]);
        assert_eq!(dataset.num_classes, 3);
    }

    #[test]
    fn load_takes_classes_from_all_splits() {
        let test_y = Tensor::from_slice(&[0_i64, 1, 7]);
        let dataset = load(&replaced("test_y", test_y));
        assert_eq!(dataset.num_classes, 8);
    }

    #[test]
    fn load_rejects_missing_file() {
        let path = Path::new("/nonexistent/data.npz");
        let err = Dataset::load(path, &DataOptions::default(), Device::Cpu).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("invalid dataset /nonexistent/data.npz: failed to read"),
            "{message}"
        );
    }

    #[test]
    fn load_rejects_missing_array() {
        let mut arrays = valid_arrays();
        arrays.retain(|(name, _)| *name != "val_y");
        assert_eq!(load_error(&arrays), "missing array \"val_y\"");
    }

    #[test]
    fn load_rejects_float64_x() {
        let arrays = replaced("val_x", images(3).to_kind(Kind::Double));
        assert_eq!(
            load_error(&arrays),
            "val_x has dtype float64, expected float32"
        );
    }

    #[test]
    fn load_rejects_int32_y() {
        let arrays = replaced("train_y", labels(6).to_kind(Kind::Int));
        assert_eq!(
            load_error(&arrays),
            "train_y has dtype int32, expected int64"
        );
    }

    #[test]
    fn load_rejects_row_count_mismatch() {
        let arrays = replaced("train_y", labels(7));
        assert_eq!(load_error(&arrays), "train_x has 6 rows but train_y has 7");
    }

    #[test]
    fn load_rejects_empty_split() {
        let mut arrays = replaced("test_x", images(0));
        arrays[5].1 = labels(0);
        assert_eq!(load_error(&arrays), "test split is empty");
    }

    #[test]
    fn load_rejects_1d_x() {
        let x = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let message = load_error(&replaced("val_x", x));
        assert!(
            message.starts_with("val_x has shape [3], expected rows x features"),
            "{message}"
        );
    }

    #[test]
    fn load_rejects_2d_y() {
        let y = labels(3).reshape([3, 1]);
        assert_eq!(
            load_error(&replaced("val_y", y)),
            "val_y has shape [3, 1], expected 1-D"
        );
    }

    #[test]
    fn load_rejects_row_shape_mismatch() {
        let x = Tensor::zeros([3, 16], (Kind::Float, Device::Cpu));
        assert_eq!(
            load_error(&replaced("test_x", x)),
            "test_x has rows of shape [16] but train_x has [1, 4, 4]"
        );
    }

    #[test]
    fn load_rejects_negative_label() {
        let y = Tensor::from_slice(&[0_i64, -1, 2]);
        assert_eq!(
            load_error(&replaced("val_y", y)),
            "val_y contains label -1, expected class ids >= 0"
        );
    }

    #[test]
    fn load_rejects_nan_input() {
        let x = images(6);
        let _ = x.get(2).fill_(f64::NAN);
        assert_eq!(
            load_error(&replaced("train_x", x)),
            "train_x contains NaN or infinite values"
        );
    }

    #[test]
    fn cnn_rejects_flat_rows() {
        let mut arrays = valid_arrays();
        for (name, array) in arrays.iter_mut() {
            if name.ends_with("_x") {
                *array = array.flatten(1, -1);
            }
        }
        let err = load(&arrays).check_input_for("cnn").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(
                "model \"cnn\" needs 4-D x (rows x channels x height x width), \
                 got train_x of shape [6, 16]"
            ),
            "{message}"
        );
    }

    #[test]
    fn cnn_rejects_one_pixel_rows() {
        let mut arrays = valid_arrays();
        for (name, array) in arrays.iter_mut() {
            if name.ends_with("_x") {
                *array = array.reshape([-1, 16, 1, 1]);
            }
        }
        let err = load(&arrays).check_input_for("cnn").unwrap_err();
        let message = err.to_string();
        assert!(
            message.ends_with("model \"cnn\" needs images of at least 2 x 2 pixels, got 1 x 1"),
            "{message}"
        );
    }

    #[test]
    fn mlp_accepts_flat_rows() {
        let mut arrays = valid_arrays();
        for (name, array) in arrays.iter_mut() {
            if name.ends_with("_x") {
                *array = array.flatten(1, -1);
            }
        }
        assert!(load(&arrays).check_input_for("mlp").is_ok());
    }

    /// Writes a one-class image folder of 4 x 4 PNGs whose pixels are (51, 102, 255).
    fn image_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "val", "test"] {
            let class_dir = dir.path().join(split).join("a");
            std::fs::create_dir_all(&class_dir).unwrap();
            let image = image::RgbImage::from_pixel(4, 4, image::Rgb([51, 102, 255]));
            image.save(class_dir.join("0.png")).unwrap();
        }
        dir
    }

    fn image_options(normalize: Option<Normalize>) -> DataOptions {
        DataOptions {
            image_size: Some(4),
            normalize,
            ..DataOptions::default()
        }
    }

    #[test]
    fn infer_format_finds_image_folder() {
        let dir = image_folder();
        assert_eq!(infer_format(dir.path()).unwrap(), "imagefolder");
    }

    #[test]
    fn image_folder_is_not_normalised_by_default() {
        let dir = image_folder();
        let dataset = Dataset::load(dir.path(), &image_options(None), Device::Cpu).unwrap();
        assert_eq!(dataset.row_shape, vec![3, 4, 4]);
        assert_eq!(dataset.num_classes, 1);
        let green = dataset.test.x.double_value(&[0, 1, 3, 3]);
        assert!((green - 0.4).abs() < 1e-6, "{green}");
    }

    #[test]
    fn image_folder_applies_normalize() {
        let dir = image_folder();
        let normalize = Normalize {
            mean: vec![0.2, 0.5, 0.0],
            std: vec![0.5, 0.25, 2.0],
        };
        let options = image_options(Some(normalize));
        let dataset = Dataset::load(dir.path(), &options, Device::Cpu).unwrap();
        let pixel: Vec<f64> = (0..3)
            .map(|channel| dataset.val.x.double_value(&[0, channel, 2, 1]))
            .collect();
        let expected = [0.0, -0.4, 0.5];
        for (value, expected) in pixel.iter().zip(expected) {
            assert!((value - expected).abs() < 1e-6, "{pixel:?}");
        }
    }

    #[test]
    fn normalize_rejects_channel_mismatch() {
        let dir = image_folder();
        let normalize = Normalize {
            mean: vec![0.5],
            std: vec![0.5],
        };
        let err = Dataset::load(dir.path(), &image_options(Some(normalize)), Device::Cpu);
        assert_eq!(
            err.unwrap_err().to_string(),
            format!(
                "invalid dataset {}: normalize_mean has 1 value but the images have 3 channels",
                dir.path().display()
            )
        );
    }

    #[test]
    fn normalize_rejects_npz() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.npz");
        Tensor::write_npz(&valid_arrays(), &path).unwrap();
        let normalize = Normalize {
            mean: vec![0.5],
            std: vec![0.5],
        };
        let err = Dataset::load(&path, &image_options(Some(normalize)), Device::Cpu);
        assert_eq!(
            err.unwrap_err().to_string(),
            format!(
                "invalid dataset {}: normalize_mean and normalize_std apply only to the image \
                 formats \"cifar10\", \"mnist\" and \"imagefolder\", got format \"npz\"",
                path.display()
            )
        );
    }

    #[test]
    fn normalize_rejects_zero_std() {
        let dir = image_folder();
        let normalize = Normalize {
            mean: vec![0.5; 3],
            std: vec![0.5, 0.0, 0.5],
        };
        let err = Dataset::load(dir.path(), &image_options(Some(normalize)), Device::Cpu);
        assert_eq!(
            err.unwrap_err().to_string(),
            format!(
                "invalid dataset {}: normalize_std contains 0, expected values > 0",
                dir.path().display()
            )
        );
    }
}
