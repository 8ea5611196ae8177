//! Builds the network and the optimizer that a [`TrainConfig`] names.

use tch::nn::{self, OptimizerConfig};
use tch::TchError;
use tunefleet_proto::hyper::TrainConfig;

use super::invalid_config;

/// Width of the cnn's hidden linear layer, between the convolutions and the head.
const CNN_HIDDEN_SIZE: i64 = 64;

/// Builds `config.model` under `root` for rows of `row_shape` and `num_classes` classes.
///
/// The caller checks the row shape against the model first ([`super::data::Dataset`] does).
pub(super) fn build(
    root: &nn::Path,
    config: &TrainConfig,
    row_shape: &[i64],
    num_classes: i64,
) -> Result<nn::SequentialT, TchError> {
    match config.model.as_str() {
        "mlp" => Ok(mlp(root, config, row_shape.iter().product(), num_classes)),
        "cnn" => Ok(cnn(root, config, row_shape, num_classes)),
        other => Err(invalid_config(format!(
            "unknown model {other:?}: expected one of \"mlp\", \"cnn\""
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
    config: &TrainConfig,
    num_features: i64,
    num_classes: i64,
) -> nn::SequentialT {
    let mut net = nn::seq_t().add_fn(|x| x.flatten(1, -1));
    let mut width = num_features;
    for layer in 0..config.hidden_layers {
        let linear = nn::linear(
            root / format!("hidden{layer}"),
            width,
            config.hidden_size,
            Default::default(),
        );
        net = net.add(linear).add_fn(|x| x.relu());
        net = with_dropout(net, config.dropout);
        width = config.hidden_size;
    }
    net.add(nn::linear(
        root / "head",
        width,
        num_classes,
        Default::default(),
    ))
}

/// Builds two 3x3 convolutions (`channels`, then twice as many) with ReLU, a 2x2 max pool,
/// dropout, then a hidden linear layer with ReLU and a linear head.
fn cnn(
    root: &nn::Path,
    config: &TrainConfig,
    row_shape: &[i64],
    num_classes: i64,
) -> nn::SequentialT {
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

    let net = nn::seq_t()
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
    with_dropout(net, config.dropout)
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(
            root / "hidden",
            num_pooled,
            CNN_HIDDEN_SIZE,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(
            root / "head",
            CNN_HIDDEN_SIZE,
            num_classes,
            Default::default(),
        ))
}

fn with_dropout(net: nn::SequentialT, probability: f64) -> nn::SequentialT {
    if probability > 0.0 {
        net.add_fn_t(move |x, train| x.dropout(probability, train))
    } else {
        net
    }
}
