"""The cheat sheet's PyTorch examples (shared/seeds/), as one script a user would run.

``python torch_examples.py`` with MLFLOW_TRACKING_URI set runs, in one process (torch and
Lightning take seconds to import): 'MLflow in a Trainer Class', 'PyTorch Lightning Integration'
(its ``MLFlowLogger`` pointed at MLFLOW_TRACKING_URI, which the local case sets to the cheat
sheet's own ``file:./mlruns``) once as written and once with ``log_model=True`` so checkpoints
are logged as artifacts, and ``mlflow.pytorch.autolog()`` with Lightning.  Then it registers each
logged model, loads every model back through ``models:/`` and predicts, and prints one JSON
summary (``readback``) that the test compares with the same script's on MLflow's sqlite store.

What differs from the cheat sheet, and why: a small synthetic dataset (seeded) instead of
MNIST; 2 epochs instead of 10/20; ``log_every_n_steps=2`` instead of 50 (with 4 batches an
epoch, 50 logs no training step at all); no progress bar.  The classes are the cheat sheet's.
"""

from __future__ import annotations

import json
import os
import sys

import mlflow
import mlflow.pytorch
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn as nn
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import MLFlowLogger
from readback import predictions, registered_summary, run_summary
from torch.utils.data import DataLoader, TensorDataset

TRACKING_URI = os.environ["MLFLOW_TRACKING_URI"]


# -- 'MLflow in a Trainer Class', as written ---------------------------------------------------

class MLflowTrainer:
    def __init__(self, model, experiment_name="default"):  # type: ignore[no-untyped-def]
        self.model = model
        self.experiment_name = experiment_name
        mlflow.set_experiment(experiment_name)

    def train(self, train_loader, val_loader, epochs=10, lr=0.001):  # type: ignore[no-untyped-def]
        with mlflow.start_run():
            # Log hyperparameters
            mlflow.log_param("epochs", epochs)
            mlflow.log_param("learning_rate", lr)
            mlflow.log_param("batch_size", train_loader.batch_size)
            mlflow.log_param("optimizer", "Adam")

            # Setup training
            optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
            criterion = nn.CrossEntropyLoss()

            # Training loop
            for epoch in range(epochs):
                # Training phase
                self.model.train()
                train_loss = 0
                for _batch_idx, (data, target) in enumerate(train_loader):
                    optimizer.zero_grad()
                    output = self.model(data)
                    loss = criterion(output, target)
                    loss.backward()
                    optimizer.step()
                    train_loss += loss.item()

                # Validation phase
                val_loss, val_acc = self._validate(val_loader, criterion)

                # Log metrics for this epoch
                mlflow.log_metric("train_loss", train_loss / len(train_loader), step=epoch)
                mlflow.log_metric("val_loss", val_loss, step=epoch)
                mlflow.log_metric("val_accuracy", val_acc, step=epoch)

                print(f"Epoch {epoch+1}/{epochs}: "
                      f"Train Loss: {train_loss/len(train_loader):.4f}, "
                      f"Val Loss: {val_loss:.4f}, "
                      f"Val Acc: {val_acc:.4f}", file=sys.stderr)

            # Log final model.  The cheat sheet's bare log_model(self.model, "model") fails on
            # MLflow 3.17 whatever the store: its default serialization, 'pt2', needs an example.
            example = next(iter(val_loader))[0][:3].numpy()
            mlflow.pytorch.log_model(self.model, "model", input_example=example)

            # Log model summary
            total_params = sum(p.numel() for p in self.model.parameters())
            mlflow.log_param("total_parameters", total_params)
            mlflow.set_tag("framework", "pytorch")

            return self.model

    def _validate(self, val_loader, criterion):  # type: ignore[no-untyped-def]
        self.model.eval()
        val_loss = 0
        correct = 0
        total = 0

        with torch.no_grad():
            for data, target in val_loader:
                output = self.model(data)
                val_loss += criterion(output, target).item()
                _, predicted = torch.max(output.data, 1)
                total += target.size(0)
                correct += (predicted == target).sum().item()

        return val_loss / len(val_loader), 100. * correct / total


# -- 'PyTorch Lightning Integration', as written -----------------------------------------------

class LightningModel(pl.LightningModule):
    def __init__(self, lr=0.001):  # type: ignore[no-untyped-def]
        super().__init__()
        self.lr = lr
        self.model = nn.Sequential(
            nn.Linear(784, 128),
            nn.ReLU(),
            nn.Linear(128, 10)
        )
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.model(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        y_hat = self(x)
        loss = self.criterion(y_hat, y)

        # Lightning automatically logs to MLflow
        self.log('train_loss', loss)
        return loss

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        y_hat = self(x)
        loss = self.criterion(y_hat, y)
        acc = (y_hat.argmax(dim=1) == y).float().mean()

        self.log('val_loss', loss)
        self.log('val_acc', acc)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# -- the examples, run -------------------------------------------------------------------------

def data(n: int, seed: int) -> TensorDataset:
    """MNIST-shaped but synthetic: the class is which of ten bands of pixels is brightest."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 784, generator=g) * 0.5
    for i, label in enumerate(y.tolist()):
        x[i, label * 78:(label + 1) * 78] += 0.5
    return TensorDataset(x, y)


def loaders() -> tuple[DataLoader, DataLoader]:  # type: ignore[type-arg]
    return (DataLoader(data(64, 1), batch_size=16),  # no shuffling: the same batches everywhere
            DataLoader(data(32, 2), batch_size=16))


# Each run its own seed: runs that trained identically could be swapped unnoticed.

def trainer_class() -> str:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Linear(128, 10)
    )
    trainer = MLflowTrainer(model, experiment_name="mnist-classification")
    train_loader, val_loader = loaders()
    trainer.train(train_loader, val_loader, epochs=2)
    return mlflow.last_active_run().info.run_id  # type: ignore[union-attr]


def lightning(log_model: bool, seed: int) -> str:
    pl.seed_everything(seed)
    # Setup MLflow logger
    mlflow_logger = MLFlowLogger(
        experiment_name="pytorch-lightning-experiment",
        tracking_uri=TRACKING_URI,
        log_model=log_model,
    )
    # Train with automatic MLflow logging
    model = LightningModel(lr=0.001)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=mlflow_logger,
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, *loaders())
    return str(mlflow_logger.run_id)


def lightning_autolog() -> str:
    pl.seed_everything(4)
    mlflow.set_experiment("pytorch-lightning-autolog")
    mlflow.pytorch.autolog()
    try:
        model = LightningModel(lr=0.001)
        trainer = pl.Trainer(max_epochs=2, log_every_n_steps=2, enable_progress_bar=False,
                             enable_model_summary=False, logger=False)
        trainer.fit(model, *loaders())
    finally:
        mlflow.pytorch.autolog(disable=True)
    return mlflow.last_active_run().info.run_id  # type: ignore[union-attr]


def summary(run_ids: dict[str, str]) -> dict[str, object]:
    client = MlflowClient()
    out: dict[str, object] = {label: run_summary(client, rid) for label, rid in run_ids.items()}
    x = data(3, 3).tensors[0].numpy()
    loaded: dict[str, object] = {}
    for label, rid in run_ids.items():
        for i, m in enumerate(sorted(
                mlflow.search_logged_models(filter_string=f"source_run_id = '{rid}'",
                                            experiment_ids=[client.get_run(rid).info.experiment_id],
                                            output_format="list"), key=lambda m: m.name)):
            # 'Model Registration', method 2: register an existing model.
            name = f"{label}-{i}"
            mlflow.register_model(f"models:/{m.model_id}", name)
            by_id = mlflow.pyfunc.load_model(f"models:/{m.model_id}").predict(x)
            by_version = mlflow.pytorch.load_model(f"models:/{name}/1")
            with torch.no_grad():
                native = by_version(torch.from_numpy(x)).numpy()
            assert np.allclose(by_id, native), (label, by_id, native)
            loaded[name] = {"predictions": predictions(by_id),
                            "versions": registered_summary(client, name, run_ids,
                                                           m.model_id)}
    out["loaded"] = loaded
    # Lightning's checkpoints, read back from the store: their weights must be the ones trained.
    ckpts: dict[str, object] = {}
    for label in ("lightning_checkpoints", "lightning_autolog"):
        for f in sorted(_walk(client, run_ids[label])):
            if f.endswith((".ckpt", ".pth")):
                local = mlflow.artifacts.download_artifacts(run_id=run_ids[label], artifact_path=f)
                state = torch.load(local, map_location="cpu", weights_only=False)
                weights = state["state_dict"]
                ckpts[f"{label}/{f}"] = {
                    "epoch": state.get("epoch"), "global_step": state.get("global_step"),
                    "weights": {k: rounded_sum(v) for k, v in sorted(weights.items())}}
    out["checkpoints"] = ckpts
    out["experiments"] = sorted(e.name for e in mlflow.search_experiments())
    return out


def rounded_sum(t: torch.Tensor) -> float:
    return float(f"{float(t.double().abs().sum()):.6g}")


def _walk(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found: list[str] = []
    for f in client.list_artifacts(run_id, path):
        found.extend(_walk(client, run_id, f.path) if f.is_dir else [f.path])
    return found


def main() -> None:
    ids = {"trainer_class": trainer_class(), "lightning": lightning(log_model=False, seed=2),
           "lightning_checkpoints": lightning(log_model=True, seed=3),
           "lightning_autolog": lightning_autolog()}
    print(json.dumps(summary(ids), sort_keys=True))


if __name__ == "__main__":
    main()
