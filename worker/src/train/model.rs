//! Builds the network and the optimizer that a [`TrainConfig`] names.
//!
//! Every network is a backbone followed by a head, the classifier layer sized to the dataset's
//! class count. The head's variables are named `fc.*` in the ResNets, as in torchvision, and
//! `head.*` in the others. They belong to optimizer group [`HEAD_GROUP`] and the backbone's to
//! [`BACKBONE_GROUP`], so the two can train at different rates. A TorchScript module is all
//! head, because the trainer cannot tell its layers apart.

use std::path::Path;
use std::sync::Mutex;

use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{TchError, Tensor, TrainableCModule};
use tunefleet_proto::hyper::TrainConfig;

use super::invalid_config;

/// Width of the cnn's hidden linear layer, between the convolutions and the head.
const CNN_HIDDEN_SIZE: i64 = 64;
/// The optimizer group of the backbone's variables.
pub(super) const BACKBONE_GROUP: usize = 0;
/// The optimizer group of the head's variables.
pub(super) const HEAD_GROUP: usize = 1;

/// A classifier split into a backbone, which computes features, and a head.
#[derive(Debug)]
pub(super) struct Network {
    backbone: Box<dyn ModuleT>,
    head: Box<dyn ModuleT>,
}

impl Network {
    /// Computes the logits of `x`. A frozen backbone runs in eval mode without recording
    /// gradients, so neither its weights nor its batch-norm statistics change.
    pub fn forward(&self, x: &Tensor, train: bool, backbone_frozen: bool) -> Tensor {
        let features = if backbone_frozen {
            tch::no_grad(|| self.backbone.forward_t(x, false))
        } else {
            self.backbone.forward_t(x, train)
        };
        self.head.forward_t(&features, train)
    }
}

/// Builds `config.model` under `root` for rows of `row_shape` and `num_classes` classes;
/// model "torchscript" loads `module` instead.
///
/// The caller checks the row shape against the model first ([`super::data::Dataset`] does).
pub(super) fn build(
    root: &nn::Path,
    config: &TrainConfig,
    row_shape: &[i64],
    num_classes: i64,
    module: Option<&Path>,
) -> Result<Network, TchError> {
    let backbone_root = root.set_group(BACKBONE_GROUP);
    let head_root = root.set_group(HEAD_GROUP);
    match config.model.as_str() {
        "mlp" => Ok(mlp(
            &backbone_root,
            &head_root,
            config,
            row_shape,
            num_classes,
        )),
        "cnn" => Ok(cnn(
            &backbone_root,
            &head_root,
            config,
            row_shape,
            num_classes,
        )),
        "resnet18" | "resnet34" | "resnet50" => Ok(resnet(
            &backbone_root,
            &head_root,
            config,
            row_shape,
            num_classes,
        )),
        "torchscript" => {
            let module = module.ok_or_else(|| {
                invalid_config("model \"torchscript\" needs a module file".to_string())
            })?;
            torchscript(&head_root, module)
        }
        other => Err(invalid_config(format!(
            "unknown model {other:?}: expected one of \"mlp\", \"cnn\", \"resnet18\", \
             \"resnet34\", \"resnet50\", \"torchscript\""
        ))),
    }
}

/// Builds the optimizer `config.optimizer` over every variable in `vars`.
pub(super) fn optimizer(
    vars: &nn::VarStore,
    config: &TrainConfig,
) -> Result<nn::Optimizer, TchError> {
    let weight_decay = config.weight_decay;
    match config.optimizer.as_str() {
        "sgd" => nn::Sgd {
            momentum: config.momentum,
            wd: weight_decay,
            ..Default::default()
        }
        .build(vars, config.lr),
        "adam" => nn::Adam::default().wd(weight_decay).build(vars, config.lr),
        "adamw" => nn::AdamW::default().wd(weight_decay).build(vars, config.lr),
        other => Err(invalid_config(format!(
            "unknown optimizer {other:?}: expected one of \"sgd\", \"adam\", \"adamw\""
        ))),
    }
}

/// Builds `hidden_layers` blocks of linear, ReLU and dropout, then a linear head. With zero
/// hidden layers the model is linear.
fn mlp(
    root: &nn::Path,
    head_root: &nn::Path,
    config: &TrainConfig,
    row_shape: &[i64],
    num_classes: i64,
) -> Network {
    let mut backbone = nn::seq_t().add_fn(|x| x.flatten(1, -1));
    let mut width = row_shape.iter().product();
    for layer in 0..config.hidden_layers {
        let linear = nn::linear(
            root / format!("hidden{layer}"),
            width,
            config.hidden_size,
            Default::default(),
        );
        backbone = backbone.add(linear).add_fn(|x| x.relu());
        backbone = with_dropout(backbone, config.dropout);
        width = config.hidden_size;
    }
    let head = nn::linear(head_root / "head", width, num_classes, Default::default());
    Network {
        backbone: Box::new(backbone),
        head: Box::new(head),
    }
}

/// Builds two 3x3 convolutions (`channels`, then twice as many) with ReLU, a 2x2 max pool,
/// dropout, then a hidden linear layer with ReLU and a linear head.
fn cnn(
    root: &nn::Path,
    head_root: &nn::Path,
    config: &TrainConfig,
    row_shape: &[i64],
    num_classes: i64,
) -> Network {
    let [in_channels, height, width] = row_shape else {
        unreachable!("Dataset::check_input_for accepts only rows of channels x height x width");
    };
    let channels = config.channels;
    let same_size = nn::ConvConfig {
        padding: 1,
        ..Default::default()
    };
    // The pool floors odd sizes, as torch's max_pool2d does without ceil_mode.
    let num_pooled = 2 * channels * (height / 2) * (width / 2);

    let backbone = nn::seq_t()
        .add(nn::conv2d(
            root / "conv1",
            *in_channels,
            channels,
            3,
            same_size,
        ))
        .add_fn(|x| x.relu())
        .add(nn::conv2d(
            root / "conv2",
            channels,
            2 * channels,
            3,
            same_size,
        ))
        .add_fn(|x| x.relu().max_pool2d_default(2));
    let backbone = with_dropout(backbone, config.dropout)
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(
            root / "hidden",
            num_pooled,
            CNN_HIDDEN_SIZE,
            Default::default(),
        ))
        .add_fn(|x| x.relu());
    let head = nn::linear(
        head_root / "head",
        CNN_HIDDEN_SIZE,
        num_classes,
        Default::default(),
    );
    Network {
        backbone: Box::new(backbone),
        head: Box::new(head),
    }
}

/// Builds torchvision's ResNet-18, -34 or -50 (tch's `vision::resnet`, whose variable names
/// match torchvision's) with dropout and a new `fc` head. Grayscale images are repeated to the
/// three input channels the first convolution expects.
fn resnet(
    root: &nn::Path,
    head_root: &nn::Path,
    config: &TrainConfig,
    row_shape: &[i64],
    num_classes: i64,
) -> Network {
    use tch::vision::resnet;

    let (features, num_features): (Box<dyn ModuleT>, i64) = match config.model.as_str() {
        "resnet18" => (Box::new(resnet::resnet18_no_final_layer(root)), 512),
        "resnet34" => (Box::new(resnet::resnet34_no_final_layer(root)), 512),
        _ => (Box::new(resnet::resnet50_no_final_layer(root)), 2048),
    };
    let grayscale = row_shape.first() == Some(&1);
    let backbone = nn::func_t(move |x, train| {
        if grayscale {
            features.forward_t(&x.expand([-1, 3, -1, -1], false), train)
        } else {
            features.forward_t(x, train)
        }
    });
    let fc = nn::linear(
        head_root / "fc",
        num_features,
        num_classes,
        Default::default(),
    );
    let head = with_dropout(nn::seq_t(), config.dropout).add(fc);
    Network {
        backbone: Box::new(backbone),
        head: Box::new(head),
    }
}

/// Loads a TorchScript module saved by `torch.jit.save` and trains its parameters, which take
/// the module's names with dots replaced by underscores. Its forward must map one `NCHW` or
/// `N x F` float tensor to logits.
fn torchscript(root: &nn::Path, path: &Path) -> Result<Network, TchError> {
    let module = TrainableCModule::load(path, root.clone())?;
    let identity = nn::func_t(|x, _train| x.shallow_clone());
    Ok(Network {
        backbone: Box::new(ScriptedModule {
            module: Mutex::new(module),
        }),
        head: Box::new(identity),
    })
}

/// A TorchScript module switched to train or eval mode before each forward, as the caller
/// requests.
#[derive(Debug)]
struct ScriptedModule {
    module: Mutex<TrainableCModule>,
}

impl ModuleT for ScriptedModule {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut module = self.module.lock().unwrap_or_else(|e| e.into_inner());
        if train {
            module.set_train();
        } else {
            module.set_eval();
        }
        module
            .forward_ts(&[x])
            .unwrap_or_else(|err| panic!("the TorchScript module's forward failed: {err}"))
    }
}

fn with_dropout(net: nn::SequentialT, probability: f64) -> nn::SequentialT {
    if probability > 0.0 {
        net.add_fn_t(move |x, train| x.dropout(probability, train))
    } else {
        net
    }
}
