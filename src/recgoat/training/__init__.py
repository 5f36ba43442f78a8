"""Lightning training spine shared by every recommender."""
from recgoat.training.callbacks import EarlyStopping, EpochSummary, RunSummary, Timings
from recgoat.training.datamodule import RecDataModule, UserBatches
from recgoat.training.module import RecModule
from recgoat.training.run_folder import CSVLogger, ModelCheckpoint, RunState
from recgoat.training.sampling import BPRBatches, NegativeSampler

__all__ = ["BPRBatches", "CSVLogger", "EarlyStopping", "EpochSummary", "ModelCheckpoint", "NegativeSampler",
           "RecDataModule", "RecModule", "RunState", "RunSummary", "Timings", "UserBatches"]
