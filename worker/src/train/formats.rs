//! Readers for the dataset formats besides npz: CIFAR-10 binary batches, MNIST idx files and
//! CSV tables. Each returns the raw splits; [`super::data::Dataset`] validates them.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::data::Normalize;
use super::shuffle;

/// Bytes of one CIFAR-10 record: a label byte, then 32 x 32 pixels of red, green and blue.
const CIFAR_RECORD_BYTES: usize = 1 + 3 * 32 * 32;
/// The per-channel mean and standard deviation of CIFAR-10's 50,000 training images, with
/// pixels scaled to [0, 1].
pub const CIFAR_MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR_STD: [f64; 3] = [0.2470, 0.2435, 0.2616];
/// The share of the training rows held out for validation when a format has no validation
/// split of its own, and of all rows held out for testing from a single CSV file.
pub(super) const HOLD_OUT_FRACTION: f64 = 0.1;

/// Inputs and labels of one split before validation.
pub type RawSplit = (Tensor, Tensor);

/// The three splits of a dataset as read from its files.
pub struct RawSplits {
    pub train: RawSplit,
    pub val: RawSplit,
    pub test: RawSplit,
}

/// A problem with one file of a dataset.
#[derive(Debug)]
pub struct FormatError {
    pub path: PathBuf,
    pub detail: String,
}

pub(super) fn error(path: &Path, detail: impl Into<String>) -> FormatError {
    FormatError {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads a CIFAR-10 binary directory: `data_batch_1.bin` to `data_batch_5.bin` (those
/// present, at least one) and `test_batch.bin`. Pixels are scaled to [0, 1] and normalised with
/// `normalize`, by default [`CIFAR_MEAN`] and [`CIFAR_STD`]; the last tenth of the shuffled
/// training rows is the validation split.
pub fn read_cifar10(dir: &Path, normalize: &Normalize) -> Result<RawSplits, FormatError> {
    let mut train_files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .filter(|path| path.is_file())
        .collect();
    if train_files.is_empty() {
        return Err(error(
            dir,
            "no CIFAR-10 training batch: expected data_batch_1.bin (to data_batch_5.bin)",
        ));
    }
    let test_file = dir.join("test_batch.bin");
    if !test_file.is_file() {
        return Err(error(&test_file, "missing CIFAR-10 test batch"));
    }
    let mut train_bytes = Vec::new();
    for path in train_files.drain(..) {
        train_bytes.extend(read_cifar_file(&path)?);
    }
    let train = cifar_records(&train_bytes, normalize)?;
    let test = cifar_records(&read_cifar_file(&test_file)?, normalize)?;
    let (train, val) = hold_out(dir, train, HOLD_OUT_FRACTION)?;
    Ok(RawSplits { train, val, test })
}

/// Reads one CIFAR-10 batch file and checks its length and labels.
fn read_cifar_file(path: &Path) -> Result<Vec<u8>, FormatError> {
    let bytes = std::fs::read(path).map_err(|err| error(path, format!("failed to read: {err}")))?;
    if bytes.is_empty() || bytes.len() % CIFAR_RECORD_BYTES != 0 {
        return Err(error(
            path,
            format!(
                "file has {} bytes, expected a non-zero multiple of the {CIFAR_RECORD_BYTES}-byte \
                 record (1 label byte and 3072 pixel bytes)",
                bytes.len()
            ),
        ));
    }
    for (index, record) in bytes.chunks(CIFAR_RECORD_BYTES).enumerate() {
        if record[0] > 9 {
            return Err(error(
                path,
                format!("record {index} has label {}, expected 0 to 9", record[0]),
            ));
        }
    }
    Ok(bytes)
}

fn cifar_records(bytes: &[u8], normalize: &Normalize) -> Result<RawSplit, FormatError> {
    let num_records = (bytes.len() / CIFAR_RECORD_BYTES) as i64;
    let records = Tensor::from_slice(bytes).view([num_records, CIFAR_RECORD_BYTES as i64]);
    let labels = records.narrow(1, 0, 1).squeeze_dim(1).to_kind(Kind::Int64);
    let pixels = records
        .narrow(1, 1, CIFAR_RECORD_BYTES as i64 - 1)
        .view([num_records, 3, 32, 32])
        .to_kind(Kind::Float)
        / 255.0;
    Ok((normalise(&pixels, &normalize.mean, &normalize.std), labels))
}

/// Subtracts `mean` from each channel of `NCHW` images and divides by `std`.
pub fn normalise(images: &Tensor, mean: &[f64], std: &[f64]) -> Tensor {
    let shape = [1, mean.len() as i64, 1, 1];
    let mean = Tensor::from_slice(mean).to_kind(Kind::Float).view(shape);
    let std = Tensor::from_slice(std).to_kind(Kind::Float).view(shape);
    (images - mean) / std
}

/// Reads MNIST's idx files from `dir`: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each possibly gzipped with a `.gz`
/// suffix. Pixels are scaled to [0, 1]; the last tenth of the shuffled training rows is the
/// validation split.
pub fn read_mnist(dir: &Path) -> Result<RawSplits, FormatError> {
    let train = mnist_split(dir, "train")?;
    let test = mnist_split(dir, "t10k")?;
    let (train, val) = hold_out(dir, train, HOLD_OUT_FRACTION)?;
    Ok(RawSplits { train, val, test })
}

fn mnist_split(dir: &Path, prefix: &str) -> Result<RawSplit, FormatError> {
    let (images_path, images) = read_idx(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let (labels_path, labels) = read_idx(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let image_dims = idx_dims(&images_path, &images, 3)?;
    let label_dims = idx_dims(&labels_path, &labels, 1)?;
    if image_dims[0] != label_dims[0] {
        return Err(error(
            &labels_path,
            format!(
                "file has {} labels but {} has {} images",
                label_dims[0],
                images_path.display(),
                image_dims[0]
            ),
        ));
    }
    let [num_images, height, width] = [image_dims[0], image_dims[1], image_dims[2]];
    let pixels = Tensor::from_slice(&images[16..])
        .view([num_images, 1, height, width])
        .to_kind(Kind::Float)
        / 255.0;
    let labels = Tensor::from_slice(&labels[8..]).to_kind(Kind::Int64);
    Ok((pixels, labels))
}

/// Reads `dir/name`, or `dir/name.gz` gunzipped when only that exists.
fn read_idx(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), FormatError> {
    let plain = dir.join(name);
    if plain.is_file() {
        let bytes = std::fs::read(&plain).map_err(|err| error(&plain, err.to_string()))?;
        return Ok((plain, bytes));
    }
    let gzipped = dir.join(format!("{name}.gz"));
    if !gzipped.is_file() {
        return Err(error(
            &plain,
            "missing MNIST idx file (or the same name with .gz)",
        ));
    }
    let file = File::open(&gzipped).map_err(|err| error(&gzipped, err.to_string()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|err| error(&gzipped, format!("failed to gunzip: {err}")))?;
    Ok((gzipped, bytes))
}

/// Checks an idx header for unsigned bytes in `num_dims` dimensions and the file length, and
/// returns the dimensions.
fn idx_dims(path: &Path, bytes: &[u8], num_dims: usize) -> Result<Vec<i64>, FormatError> {
    let header_len = 4 + 4 * num_dims;
    let expected_magic = [0, 0, 0x08, num_dims as u8];
    if bytes.len() < header_len || bytes[..4] != expected_magic {
        return Err(error(
            path,
            format!(
                "not an idx file of unsigned bytes in {num_dims} dimensions: expected the magic \
                 number {expected_magic:02x?}, got {:02x?}",
                &bytes[..bytes.len().min(4)]
            ),
        ));
    }
    let dims: Vec<i64> = bytes[4..header_len]
        .chunks(4)
        .map(|d| i64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]])))
        .collect();
    let num_values: i64 = dims.iter().product();
    if bytes.len() as i64 != header_len as i64 + num_values {
        return Err(error(
            path,
            format!(
                "file has {} bytes, expected {} for a header and dimensions {dims:?}",
                bytes.len(),
                header_len as i64 + num_values
            ),
        ));
    }
    Ok(dims)
}

/// Reads CSV data with a header row from one `.csv` file or a directory.
///
/// The rows of one file are shuffled and split into 80% train, 10% validation and 10% test. A
/// directory has `train.csv`, `test.csv` and optionally `val.csv`; without it, the last tenth
/// of the shuffled training rows is the validation split. The column named `label_column`
/// contains class ids >= 0 and every other column a float feature.
pub fn read_csv(path: &Path, label_column: &str) -> Result<RawSplits, FormatError> {
    if path.is_file() {
        let (all, _) = csv_split(path, label_column)?;
        let (rest, test) = hold_out(path, all, HOLD_OUT_FRACTION)?;
        let (train, val) = hold_out(path, rest, HOLD_OUT_FRACTION / (1.0 - HOLD_OUT_FRACTION))?;
        return Ok(RawSplits { train, val, test });
    }
    let (train, columns) = csv_split(&path.join("train.csv"), label_column)?;
    let same_columns = |split_path: PathBuf| -> Result<RawSplit, FormatError> {
        let (split, split_columns) = csv_split(&split_path, label_column)?;
        if split_columns != columns {
            return Err(error(
                &split_path,
                format!("feature columns {split_columns:?} differ from {columns:?} in train.csv"),
            ));
        }
        Ok(split)
    };
    let test = same_columns(path.join("test.csv"))?;
    let val_path = path.join("val.csv");
    let (train, val) = if val_path.is_file() {
        (train, same_columns(val_path)?)
    } else {
        hold_out(path, train, HOLD_OUT_FRACTION)?
    };
    Ok(RawSplits { train, val, test })
}

/// Reads one CSV file and returns its split and the names of its feature columns.
fn csv_split(path: &Path, label_column: &str) -> Result<(RawSplit, Vec<String>), FormatError> {
    let mut reader = csv::Reader::from_path(path).map_err(|err| error(path, err.to_string()))?;
    let header = reader
        .headers()
        .map_err(|err| error(path, format!("failed to read the header: {err}")))?
        .clone();
    let label_index = header.iter().position(|name| name == label_column);
    let Some(label_index) = label_index else {
        let columns: Vec<&str> = header.iter().collect();
        return Err(error(
            path,
            format!("no label column {label_column:?} in the header, which has {columns:?}"),
        ));
    };
    let num_features = header.len() - 1;
    if num_features == 0 {
        return Err(error(
            path,
            "the header has no feature column besides the label",
        ));
    }

    let mut features = Vec::new();
    let mut labels = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|err| error(path, err.to_string()))?;
        // The header is line 1.
        let line = record.position().map_or(0, |p| p.line());
        for (column, field) in record.iter().enumerate() {
            let name = &header[column];
            if column == label_index {
                let label = field.trim().parse::<i64>().ok().filter(|l| *l >= 0);
                let label = label.ok_or_else(|| {
                    error(
                        path,
                        format!("line {line}: label {field:?} is not a class id >= 0"),
                    )
                })?;
                labels.push(label);
            } else {
                let value = field.trim().parse::<f32>().map_err(|_| {
                    error(
                        path,
                        format!("line {line}: column {name:?} has {field:?}, expected a number"),
                    )
                })?;
                features.push(value);
            }
        }
    }
    if labels.is_empty() {
        return Err(error(path, "the file has a header but no rows"));
    }
    let x = Tensor::from_slice(&features).view([labels.len() as i64, num_features as i64]);
    let columns = header
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != label_index)
        .map(|(_, name)| name.to_string())
        .collect();
    Ok(((x, Tensor::from_slice(&labels)), columns))
}

/// Splits `fraction` of the rows (at least one) off a shuffled copy of `split`, with a fixed
/// seed so that every trial of a sweep holds out the same rows.
pub(super) fn hold_out(
    path: &Path,
    split: RawSplit,
    fraction: f64,
) -> Result<(RawSplit, RawSplit), FormatError> {
    let (x, y) = split;
    let num_rows = y.size()[0];
    if num_rows < 2 {
        return Err(error(
            path,
            format!("{num_rows} rows cannot be split into training and validation rows"),
        ));
    }
    let num_held = ((num_rows as f64 * fraction).round() as i64).clamp(1, num_rows - 1);
    let order = Tensor::from_slice(&shuffle::permutation(num_rows as usize, 0, 0));
    let kept = order.narrow(0, 0, num_rows - num_held).sort(0, false).0;
    let held = order
        .narrow(0, num_rows - num_held, num_held)
        .sort(0, false)
        .0;
    let take = |rows: &Tensor| (x.index_select(0, rows), y.index_select(0, rows));
    Ok((take(&kept), take(&held)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Builds a CIFAR record whose label is `label` and whose pixels are all `value`.
    fn cifar_record(label: u8, value: u8) -> Vec<u8> {
        let mut record = vec![value; CIFAR_RECORD_BYTES];
        record[0] = label;
        record
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    fn write_cifar_dir(dir: &Path, num_train: u8) {
        let train: Vec<u8> = (0..num_train)
            .flat_map(|i| cifar_record(i % 10, i))
            .collect();
        write(&dir.join("data_batch_1.bin"), &train);
        write(&dir.join("test_batch.bin"), &cifar_record(7, 255));
    }

    #[test]
    fn cifar_decodes_labels_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar_dir(dir.path(), 10);
        let splits = read_cifar10(dir.path(), &Normalize::cifar10()).unwrap();
        assert_eq!(splits.train.0.size(), vec![9, 3, 32, 32]);
        assert_eq!(splits.val.0.size(), vec![1, 3, 32, 32]);
        assert_eq!(Vec::<i64>::try_from(&splits.test.1).unwrap(), vec![7]);
        // Every pixel of the test image is 255, so each channel is (1 - mean) / std.
        for channel in 0..3 {
            let value = splits.test.0.double_value(&[0, channel, 5, 9]);
            let expected = (1.0 - CIFAR_MEAN[channel as usize]) / CIFAR_STD[channel as usize];
            assert!((value - expected).abs() < 1e-5, "{value} != {expected}");
        }
        // Training record i has label i % 10 and pixels i, whichever split it landed in.
        let mut seen = Vec::new();
        for (x, y) in [&splits.train, &splits.val] {
            for row in 0..y.size()[0] {
                let label = y.int64_value(&[row]);
                let pixel = x.double_value(&[row, 0, 0, 0]) * CIFAR_STD[0] + CIFAR_MEAN[0];
                assert!((pixel * 255.0 - label as f64).abs() < 1e-3);
                seen.push(label);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<i64>>());
    }

    #[test]
    fn cifar_rejects_truncated_record() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar_dir(dir.path(), 2);
        let path = dir.path().join("test_batch.bin");
        write(&path, &cifar_record(1, 0)[..3000]);
        let err = read_cifar10(dir.path(), &Normalize::cifar10())
            .err()
            .unwrap();
        assert_eq!(err.path, path);
        assert_eq!(
            err.detail,
            "file has 3000 bytes, expected a non-zero multiple of the 3073-byte record (1 label \
             byte and 3072 pixel bytes)"
        );
    }

    #[test]
    fn cifar_rejects_label_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar_dir(dir.path(), 2);
        let mut bytes = cifar_record(1, 0);
        bytes.extend(cifar_record(10, 0));
        write(&dir.path().join("data_batch_1.bin"), &bytes);
        let err = read_cifar10(dir.path(), &Normalize::cifar10())
            .err()
            .unwrap();
        assert_eq!(err.detail, "record 1 has label 10, expected 0 to 9");
    }

    #[test]
    fn cifar_needs_test_batch() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("data_batch_1.bin"), &cifar_record(1, 0));
        let err = read_cifar10(dir.path(), &Normalize::cifar10())
            .err()
            .unwrap();
        assert_eq!(err.path, dir.path().join("test_batch.bin"));
        assert_eq!(err.detail, "missing CIFAR-10 test batch");
    }

    fn idx_images(images: &[[u8; 4]]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 8, 3];
        for dim in [images.len() as u32, 2, 2] {
            bytes.extend(dim.to_be_bytes());
        }
        bytes.extend(images.iter().flatten());
        bytes
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 8, 1];
        bytes.extend((labels.len() as u32).to_be_bytes());
        bytes.extend(labels);
        bytes
    }

    fn write_mnist_dir(dir: &Path) {
        let train: Vec<[u8; 4]> = (0..10u8).map(|i| [i, 0, 0, 255]).collect();
        write(&dir.join("train-images-idx3-ubyte"), &idx_images(&train));
        write(
            &dir.join("train-labels-idx1-ubyte"),
            &idx_labels(&(0..10).collect::<Vec<u8>>()),
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&idx_images(&[[51, 102, 153, 204]])).unwrap();
        write(
            &dir.join("t10k-images-idx3-ubyte.gz"),
            &gz.finish().unwrap(),
        );
        write(&dir.join("t10k-labels-idx1-ubyte"), &idx_labels(&[3]));
    }

    #[test]
    fn mnist_decodes_plain_and_gzipped_files() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_dir(dir.path());
        let splits = read_mnist(dir.path()).unwrap();
        assert_eq!(splits.train.0.size(), vec![9, 1, 2, 2]);
        assert_eq!(splits.val.0.size(), vec![1, 1, 2, 2]);
        let test_pixels = Vec::<f32>::try_from(splits.test.0.flatten(0, -1)).unwrap();
        assert_eq!(test_pixels, vec![0.2, 0.4, 0.6, 0.8]);
        assert_eq!(Vec::<i64>::try_from(&splits.test.1).unwrap(), vec![3]);
        let label = splits.val.1.int64_value(&[0]);
        let expected = f64::from(label as f32 / 255.0);
        assert_eq!(splits.val.0.double_value(&[0, 0, 0, 0]), expected);
    }

    #[test]
    fn mnist_rejects_count_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_dir(dir.path());
        let path = dir.path().join("train-labels-idx1-ubyte");
        write(&path, &idx_labels(&[1, 2]));
        let err = read_mnist(dir.path()).err().unwrap();
        assert_eq!(err.path, path);
        assert!(
            err.detail.starts_with("file has 2 labels but "),
            "{}",
            err.detail
        );
        assert!(err.detail.ends_with(" has 10 images"), "{}", err.detail);
    }

    #[test]
    fn mnist_rejects_bad_magic() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_dir(dir.path());
        write(
            &dir.path().join("train-images-idx3-ubyte"),
            &idx_labels(&[1]),
        );
        let err = read_mnist(dir.path()).err().unwrap();
        assert_eq!(
            err.detail,
            "not an idx file of unsigned bytes in 3 dimensions: expected the magic number \
             [00, 00, 08, 03], got [00, 00, 08, 01]"
        );
    }

    #[test]
    fn csv_reads_label_column_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let train = "a,class,b\n1.5,0,2\n-3,1,4.25\n0,2,0\n1,1,1\n";
        write(&dir.path().join("train.csv"), train.as_bytes());
        write(&dir.path().join("val.csv"), b"a,class,b\n7,1,8\n");
        write(&dir.path().join("test.csv"), b"a,class,b\n5,2,6\n");
        let splits = read_csv(dir.path(), "class").unwrap();
        assert_eq!(splits.train.0.size(), vec![4, 2]);
        let first = Vec::<f32>::try_from(splits.train.0.get(1)).unwrap();
        assert_eq!(first, vec![-3.0, 4.25]);
        assert_eq!(
            Vec::<i64>::try_from(&splits.train.1).unwrap(),
            vec![0, 1, 2, 1]
        );
        assert_eq!(
            Vec::<f32>::try_from(splits.val.0.get(0)).unwrap(),
            vec![7.0, 8.0]
        );
    }

    #[test]
    fn csv_rejects_other_columns_in_test_file() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("train.csv"), b"a,label,b\n1,0,2\n3,1,4\n");
        write(&dir.path().join("test.csv"), b"b,label,a\n5,1,6\n");
        let err = read_csv(dir.path(), "label").err().unwrap();
        assert_eq!(err.path, dir.path().join("test.csv"));
        assert_eq!(
            err.detail,
            "feature columns [\"b\", \"a\"] differ from [\"a\", \"b\"] in train.csv"
        );
    }

    #[test]
    fn csv_splits_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        let rows: String = (0..20).map(|i| format!("{i},{}\n", i % 2)).collect();
        write(&path, format!("x,label\n{rows}").as_bytes());
        let splits = read_csv(&path, "label").unwrap();
        assert_eq!(splits.train.1.size(), vec![16]);
        assert_eq!(splits.val.1.size(), vec![2]);
        assert_eq!(splits.test.1.size(), vec![2]);
    }

    #[test]
    fn csv_rejects_missing_label_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        write(&path, b"x,y\n1,0\n");
        let err = read_csv(&path, "label").err().unwrap();
        assert_eq!(
            err.detail,
            "no label column \"label\" in the header, which has [\"x\", \"y\"]"
        );
    }

    #[test]
    fn csv_rejects_non_numeric_feature() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        write(&path, b"x,label\n1,0\nabc,1\n");
        let err = read_csv(&path, "label").err().unwrap();
        assert_eq!(
            err.detail,
            "line 3: column \"x\" has \"abc\", expected a number"
        );
    }

    #[test]
    fn csv_rejects_negative_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        write(&path, b"x,label\n1,-1\n2,0\n");
        let err = read_csv(&path, "label").err().unwrap();
        assert_eq!(err.detail, "line 2: label \"-1\" is not a class id >= 0");
    }
}
