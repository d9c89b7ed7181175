"""The cheat sheet's Hugging Face example (shared/seeds/), as one script a user would run.

``python hf_examples.py`` with MLFLOW_TRACKING_URI set runs, in one process: 'Basic Experiment
Tracking with Hugging Face Transformers' (``Trainer`` reporting to MLflow, then
``mlflow.transformers.log_model``) and the same training under ``mlflow.transformers.autolog()``.
Then it registers each logged model, loads every model back through ``models:/`` and predicts,
and prints one JSON summary (``readback``) that the test compares with the same script's on
MLflow's sqlite store.

What differs from the cheat sheet, and why: nothing may come from a hub, so the model is a tiny
DistilBERT built from a config and the tokenizer one built from a ten-word vocabulary; eight
sentences instead of two, 2 epochs instead of 3, batches of 4 and a log every step, so that
there is a loss history to compare; ``report_to="mlflow"`` said explicitly (transformers 5
reports to nothing by default); ``processing_class=`` instead of ``tokenizer=``, which
transformers 5 removed (the cheat sheet's ``Trainer(tokenizer=...)`` raises a TypeError);
``task`` and ``pip_requirements`` given to ``log_model`` (a model built from a config names no
task; for requirements see ``REQUIREMENTS``); ``mlflow.flush_async_logging()`` after training.

Why the flush: transformers' MLflow callback logs the run's params and metrics asynchronously
(``synchronous=False``), and MLflow's ``log_model`` copies the run's params onto the logged model
when it is called.  Without waiting, how many params the model gets is up to the clock, on any
store: in one CI run MLflow's sqlite store itself gave the model 5 of the run's 147 params, and
every backend then "diverged" from that reference (a 1.5 s delay in sqlite's ``log_batch``
reproduces it).  A user whose logged model must carry the training's params needs the same
flush.
"""

from __future__ import annotations

import json
import os

import accelerate
import mlflow
import mlflow.transformers
import numpy as np
import torch
import transformers
from datasets import Dataset
from mlflow.tracking import MlflowClient
from readback import predictions, registered_summary, run_summary
from transformers import (
    AutoModelForSequenceClassification,
    DistilBertConfig,
    DistilBertTokenizer,
    Trainer,
    TrainingArguments,
    set_seed,
)

WORDS = ["this", "is", "great", "terrible", "fine", "awful", "movie", "food", "!"]
TEXTS = ["This is great!", "This is terrible!", "This movie is great!", "This food is awful!",
         "This is fine!", "This movie is terrible!", "This food is great!", "This is awful!"]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]
#: Given, not inferred: for a torch model MLflow's default requirements pin torchvision, which
#: must then be installed, and PyPI's torchvision (a CUDA build) cannot import beside the CPU
#: torch 2.13.0 this suite uses.
REQUIREMENTS = [f"{m.__name__}=={m.__version__}" for m in (transformers, torch, accelerate)]


def tiny_model_and_tokenizer(seed: int):  # type: ignore[no-untyped-def]
    """Stand-ins for ``from_pretrained("distilbert-base-uncased")``, built here, seeded."""
    set_seed(seed)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = DistilBertTokenizer(vocab=vocab)
    config = DistilBertConfig(vocab_size=len(vocab), dim=16, hidden_dim=32, n_layers=1,
                              n_heads=2, max_position_embeddings=32, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    return tokenizer, model


def basic_tracking() -> str:
    """'Basic Experiment Tracking with Hugging Face Transformers', as written but for the
    differences the module docstring lists."""
    # Set experiment
    mlflow.set_experiment("text-classification")

    model_name = "distilbert-base-uncased"
    tokenizer, model = tiny_model_and_tokenizer(seed=0)

    # Sample data preparation
    texts = TEXTS
    labels = LABELS
    dataset = Dataset.from_dict({
        "text": texts,
        "labels": labels
    })

    def tokenize_function(examples):  # type: ignore[no-untyped-def]
        return tokenizer(examples["text"], truncation=True, padding=True)

    tokenized_dataset = dataset.map(tokenize_function, batched=True)

    # Start MLflow run
    with mlflow.start_run() as run:
        # Log parameters
        mlflow.log_param("model_name", model_name)
        mlflow.log_param("num_labels", 2)
        mlflow.log_param("max_length", 512)

        # Training arguments
        training_args = TrainingArguments(
            output_dir="./results",
            num_train_epochs=2,
            per_device_train_batch_size=4,
            logging_steps=1,
            report_to="mlflow",
            seed=0,
            save_strategy="no",
            disable_tqdm=True,
        )

        # Log training hyperparameters
        mlflow.log_param("epochs", training_args.num_train_epochs)
        mlflow.log_param("batch_size", training_args.per_device_train_batch_size)

        # Create trainer
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=tokenized_dataset,
            processing_class=tokenizer,
        )

        # Train model
        trainer.train()
        # Wait for what the Trainer logged asynchronously (see the module docstring).
        mlflow.flush_async_logging()

        # Log metrics
        mlflow.log_metric("final_loss", trainer.state.log_history[-1]["train_loss"])
        mlflow.log_metric("total_steps", trainer.state.global_step)

        # Log the model with tokenizer
        mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            artifact_path="model",
            task="text-classification",
            pip_requirements=REQUIREMENTS,
        )

        # Log tags
        mlflow.set_tag("model_type", "transformer")
        mlflow.set_tag("task", "text_classification")
        mlflow.set_tag("framework", "transformers")
        return str(run.info.run_id)


def autolog() -> str:
    """The same training under ``mlflow.transformers.autolog()``: MLflow adds transformers'
    MLflowCallback to the Trainer (transformers 5 reports to nothing by default) and the run is
    the callback's own."""
    mlflow.set_experiment("text-classification-autolog")
    tokenizer, model = tiny_model_and_tokenizer(seed=1)
    dataset = Dataset.from_dict({"text": TEXTS, "labels": LABELS}).map(
        lambda e: tokenizer(e["text"], truncation=True, padding=True), batched=True)
    mlflow.transformers.autolog()
    try:
        args = TrainingArguments(output_dir="./results-autolog", num_train_epochs=2,
                                 per_device_train_batch_size=4, logging_steps=1, seed=1,
                                 save_strategy="no", disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=dataset,
                processing_class=tokenizer).train()
        run = mlflow.last_active_run()
        assert run is not None, "autolog logged no run"
        with mlflow.start_run(run_id=run.info.run_id):
            mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name="model", task="text-classification", pip_requirements=REQUIREMENTS)
        return str(run.info.run_id)
    finally:
        mlflow.transformers.autolog(disable=True)


def summary(run_ids: dict[str, str]) -> dict[str, object]:
    client = MlflowClient()
    out: dict[str, object] = {label: run_summary(client, rid) for label, rid in run_ids.items()}
    loaded: dict[str, object] = {}
    for label, rid in run_ids.items():
        models = mlflow.search_logged_models(
            filter_string=f"source_run_id = '{rid}'", output_format="list",
            experiment_ids=[client.get_run(rid).info.experiment_id])
        for i, m in enumerate(sorted(models, key=lambda m: m.name)):
            # 'Model Registration', method 2: register an existing model.
            name = f"{label}-{i}"
            mlflow.register_model(f"models:/{m.model_id}", name)
            scored = mlflow.pyfunc.load_model(f"models:/{m.model_id}").predict(TEXTS[:3])
            pipe = mlflow.transformers.load_model(f"models:/{name}/1")
            native = pipe(TEXTS[:3])
            assert list(scored["label"]) == [r["label"] for r in native], (scored, native)
            assert np.allclose(scored["score"], [r["score"] for r in native]), (scored, native)
            loaded[name] = {"labels": list(scored["label"]),
                            "scores": predictions(scored["score"]),
                            "versions": registered_summary(client, name, run_ids,
                                                           m.model_id)}
    out["loaded"] = loaded
    out["experiments"] = sorted(e.name for e in mlflow.search_experiments())
    return out


def main() -> None:
    torch.use_deterministic_algorithms(True)
    assert os.environ.get("HF_HUB_OFFLINE") == "1", "nothing may be fetched from a hub"
    ids = {"transformers": basic_tracking(), "transformers_autolog": autolog()}
    print(json.dumps(summary(ids), sort_keys=True))


if __name__ == "__main__":
    main()
