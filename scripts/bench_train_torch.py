"""The PyTorch eager side of scripts/bench_train: the same model, optimizer, batch size and
thread count as the tch trainer's, on synthetic CIFAR-sized images.

Usage: bench_train_torch.py MODEL BATCH_SIZE THREADS ROWS EPOCHS
Prints one JSON line: the samples per second over every epoch after the first.
"""

import json
import sys
import time

import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from torch_resnet import ResNet  # noqa: E402


def cnn(channels=16, num_classes=10):
    """Build the trainer's cnn: two 3x3 convolutions, a 2x2 max pool, a hidden layer and a head."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * 16 * 16, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def main():
    model_name, batch_size, threads, rows, epochs = sys.argv[1:6]
    batch_size, threads, rows, epochs = int(batch_size), int(threads), int(rows), int(epochs)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(rows, 3, 32, 32)
    y = torch.randint(10, (rows,))
    val_x, val_y = torch.randn(32, 3, 32, 32), torch.randint(10, (32,))
    model = cnn() if model_name == "cnn" else ResNet([2, 2, 2, 2], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    epoch_ends = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(rows)
        for first in range(0, rows, batch_size):
            rows_ = order[first : first + batch_size]
            loss = loss_fn(model(x[rows_]), y[rows_])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
        model.eval()
        with torch.no_grad():
            loss_fn(model(val_x), val_y).item()
        epoch_ends.append(time.perf_counter() - start)
    seconds = epoch_ends[-1] - epoch_ends[0]
    result = {
        "impl": "pytorch",
        "model": model_name,
        "batch_size": batch_size,
        "threads": threads,
        "samples_per_s": round(rows * (epochs - 1) / seconds, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
