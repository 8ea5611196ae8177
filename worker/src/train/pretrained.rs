//! Loads pretrained weights into a freshly built model by tensor name.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Tensor};

use super::TrainError;

/// The outcome of loading a pretrained file, by variable and tensor name.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PretrainedReport {
    /// The file's path as given.
    pub path: String,
    /// Model variables that took the file's values.
    pub loaded: Vec<String>,
    /// File tensors that were not used, with the reason.
    pub skipped: Vec<SkippedTensor>,
    /// Model variables that kept their fresh initialisation: the file has no tensor of that
    /// name or one of another shape.
    pub initialised: Vec<String>,
}

/// A tensor of the pretrained file that the model did not take.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SkippedTensor {
    pub name: String,
    pub reason: String,
}

/// Copies every tensor of the file at `path` whose name and shape match a variable of `vars`.
///
/// A `.safetensors` file is read as safetensors and any other as libtorch's tensor archive
/// (`.ot`, as `VarStore::save` writes it). A tensor whose shape differs, such as a classifier
/// head trained for another number of classes, is skipped and the variable stays freshly
/// initialised. Values are converted to each variable's dtype and device.
pub fn load(vars: &nn::VarStore, path: &Path) -> Result<PretrainedReport, TrainError> {
    let invalid = |detail: String| TrainError::Pretrained {
        path: path.to_path_buf(),
        detail,
    };
    let tensors = read(path).map_err(|err| invalid(format!("failed to read the file: {err}")))?;
    let tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let mut variables: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));

    let mut report = PretrainedReport {
        path: path.display().to_string(),
        ..Default::default()
    };
    for (name, variable) in &variables {
        let Some(source) = tensors.get(name) else {
            report.initialised.push(name.clone());
            continue;
        };
        if source.size() != variable.size() {
            report.skipped.push(SkippedTensor {
                name: name.clone(),
                reason: format!(
                    "shape {:?} in the file but {:?} in the model",
                    source.size(),
                    variable.size()
                ),
            });
            report.initialised.push(name.clone());
            continue;
        }
        let mut variable = variable.shallow_clone();
        tch::no_grad(|| -> Result<(), tch::TchError> {
            let source = source.f_to_device(variable.device())?;
            variable.f_copy_(&source.f_to_kind(variable.kind())?)?;
            Ok(())
        })
        .map_err(|err| invalid(format!("failed to copy tensor {name:?}: {err}")))?;
        report.loaded.push(name.clone());
    }
    for name in tensors.keys() {
        if !variables.iter().any(|(variable, _)| variable == name) {
            report.skipped.push(SkippedTensor {
                name: name.clone(),
                reason: "no variable of this name in the model".to_string(),
            });
        }
    }
    if report.loaded.is_empty() {
        return Err(invalid(format!(
            "no tensor matches a model variable by name and shape; the model expects names \
             such as {:?}",
            variables
                .first()
                .map(|(name, _)| name.as_str())
                .unwrap_or("")
        )));
    }
    Ok(report)
}

fn read(path: &Path) -> Result<Vec<(String, Tensor)>, tch::TchError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Tensor::read_safetensors(path),
        _ => Tensor::load_multi(path),
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};
    use tunefleet_proto::hyper::TrainConfig;

    use super::super::model;
    use super::*;

    /// Builds resnet18 for 3 x 32 x 32 images and `num_classes` classes.
    fn resnet18(num_classes: i64, seed: i64) -> nn::VarStore {
        tch::manual_seed(seed);
        let vars = nn::VarStore::new(Device::Cpu);
        let config = TrainConfig::from_params("resnet18", &[]).unwrap();
        model::build(&vars.root(), &config, &[3, 32, 32], num_classes, None).unwrap();
        vars
    }

    /// Saves a 5-class resnet18 with one extra tensor and returns the file's tensors.
    fn save_pretrained(path: &Path) -> BTreeMap<String, Tensor> {
        let vars = resnet18(5, 1);
        let mut tensors: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
        tensors.push((
            "extra.weight".to_string(),
            Tensor::ones([2], (Kind::Float, Device::Cpu)),
        ));
        Tensor::write_safetensors(&tensors, path).unwrap();
        tensors.into_iter().collect()
    }

    #[test]
    fn load_copies_backbone_and_replaces_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resnet18.safetensors");
        let saved = save_pretrained(&path);
        let vars = resnet18(10, 2);
        let fresh_fc = vars.variables()["fc.weight"].copy();

        let report = load(&vars, &path).unwrap();

        let variables = vars.variables();
        for name in [
            "conv1.weight",
            "layer4.1.bn2.running_var",
            "layer2.0.downsample.0.weight",
        ] {
            assert!(
                report.loaded.contains(&name.to_string()),
                "{name} not loaded"
            );
            assert!(
                variables[name].equal(&saved[name]),
                "{name} differs from the file"
            );
        }
        assert_eq!(report.loaded.len(), variables.len() - 2);
        assert_eq!(report.initialised, vec!["fc.bias", "fc.weight"]);
        assert_eq!(variables["fc.weight"].size(), vec![10, 512]);
        assert!(variables["fc.weight"].equal(&fresh_fc));
        let skipped: Vec<(&str, &str)> = report
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            vec![
                ("fc.bias", "shape [5] in the file but [10] in the model"),
                (
                    "fc.weight",
                    "shape [5, 512] in the file but [10, 512] in the model"
                ),
                ("extra.weight", "no variable of this name in the model"),
            ]
        );
    }

    #[test]
    fn load_rejects_file_without_matching_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.safetensors");
        let tensors = [("weight", Tensor::ones([2], (Kind::Float, Device::Cpu)))];
        Tensor::write_safetensors(&tensors, &path).unwrap();
        let err = load(&resnet18(10, 2), &path).unwrap_err();
        let message = err.to_string();
        assert!(
            message.ends_with(
                "no tensor matches a model variable by name and shape; the model expects names \
                 such as \"bn1.bias\""
            ),
            "{message}"
        );
    }

    #[test]
    fn load_reads_ot_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resnet18.ot");
        resnet18(10, 1).save(&path).unwrap();
        let vars = resnet18(10, 2);
        let report = load(&vars, &path).unwrap();
        assert_eq!(report.loaded.len(), vars.variables().len());
        assert!(report.skipped.is_empty());
        assert!(report.initialised.is_empty());
    }
}
