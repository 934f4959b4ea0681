"""The cold-start protocol (``cold_start_share``): the newest items never appear in training.

The newest ``cold_start_share`` of the items, by first appearance (their earliest ``TIME_FIELD`` value; among
equal times the item whose first interaction comes later in ``<dataset>.inter`` is the newer), are *cold*. Every
interaction with a cold item that is not its user's last one is removed before RecBole's time-ordered leave-one-out
split, and users left with fewer than :data:`MIN_USER_INTERACTIONS` interactions are dropped. So training
sequences (histories and targets) and validation targets hold no cold item, while a test target may be one. The item
file (``<dataset>.item``) is loaded for every model (:func:`check_cold_start` adds it to ``load_col``), so cold
items keep their ids and content even when they lost all their interactions, and every model ranks the same items.
The test split is then evaluated once more per group of users (:func:`target_groups`): those whose target is a warm
item and those whose target is a cold one.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import getLogger

import numpy as np
import pandas as pd
import torch
from recbole.config import Config
from recbole.data.dataloader import AbstractDataLoader
from recbole.utils import ModelType

from recbole_qrec.data.atomic_files import MIN_USER_INTERACTIONS
from recbole_qrec.errors import ConfigError

TARGET_GROUPS = ("warm", "cold")
LEAVE_ONE_OUT = {"split": {"LS": "valid_and_test"}, "order": "TO"}


def check_cold_start(config: Config) -> None:
    """Check what ``cold_start_share`` (its value checked by :data:`recbole_qrec.config.VALUE_RULES`) needs (a
    sequential model, the time-ordered leave-one-out split); with a share, ``load_col`` also loads the item ids of
    ``<dataset>.item``, so that cold items without interactions left keep their ids."""
    share = config["cold_start_share"]
    if share is None:
        return
    eval_args = config["eval_args"]
    if {key: eval_args.get(key) for key in LEAVE_ONE_OUT} != LEAVE_ONE_OUT or config["benchmark_filename"]:
        raise ConfigError(f"cold_start_share needs the time-ordered leave-one-out split (eval_args split "
                          f"{LEAVE_ONE_OUT['split']}, order TO, no benchmark_filename), got split {eval_args.get('split')} "
                          f"order {eval_args.get('order')} — keep the default eval_args or unset cold_start_share")
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise ConfigError(f"cold_start_share applies to sequential models, and {config['model']} is not one — run a "
                          "sequential model (e.g. SASRec) or unset cold_start_share")
    load_col = config["load_col"]
    if load_col is not None and "item" not in load_col:
        config["load_col"] = {**load_col, "item": [config["ITEM_ID_FIELD"]]}


@dataclass(frozen=True)
class HeldOut:
    """What :func:`hold_out_cold_items` kept and removed."""

    inter: pd.DataFrame  # the interactions kept
    cold_items: list[str]  # item tokens, oldest first appearance first
    items: int  # items with interactions, cold ones included
    removed_interactions: int  # interactions with a cold item that were not their user's last, and dropped users'
    dropped_users: int  # users left with fewer than MIN_USER_INTERACTIONS


def newest_items(inter: pd.DataFrame, item_field: str, time_field: str, share: float) -> tuple[list[str], int]:
    """The newest ``share`` of the items of ``inter`` by first appearance (at least one; oldest first), and the
    number of items. Equal first times: the item whose first row comes later is the newer."""
    rows = pd.DataFrame({"item": inter[item_field].to_numpy(), "time": inter[time_field].to_numpy(),
                         "row": np.arange(len(inter))})
    first = rows.sort_values(["time", "row"]).drop_duplicates("item")["item"].tolist()
    count = max(1, round(share * len(first)))
    return first[-count:], len(first)


def last_interactions(inter: pd.DataFrame, user_field: str, time_field: str) -> pd.Series:
    """Whether each row is its user's last interaction as RecBole's stable time sort orders them (equal times: the
    later row)."""
    ordered = inter.sort_values(time_field, kind="stable")
    last = ordered.index[~ordered[user_field].duplicated(keep="last")]
    return pd.Series(inter.index.isin(last), index=inter.index)


def hold_out_cold_items(inter: pd.DataFrame, user_field: str, item_field: str, time_field: str,
                        share: float) -> HeldOut:
    """The interactions of ``inter`` (RecBole's loaded ``inter_feat``) under the cold-start protocol."""
    cold, items = newest_items(inter, item_field, time_field, share)
    keep = ~inter[item_field].isin(cold) | last_interactions(inter, user_field, time_field)
    counts = inter[user_field][keep].value_counts()
    short = counts.index[counts < MIN_USER_INTERACTIONS]
    keep &= ~inter[user_field].isin(short)
    return HeldOut(inter[keep], cold, items, int((~keep).sum()), len(short))


def log_held_out(held_out: HeldOut, share: float) -> None:
    """Log what the protocol held out (RecBole's logger)."""
    getLogger().info(
        f"cold start: the newest {100 * share:g}% of the {held_out.items} items by first appearance are cold "
        f"({len(held_out.cold_items)} items); {held_out.removed_interactions} interactions removed (those with a cold "
        f"item before their user's last, and the users left with fewer than {MIN_USER_INTERACTIONS}: "
        f"{held_out.dropped_users} users dropped)")


def target_groups(loader: AbstractDataLoader, cold_items: torch.Tensor) -> dict[str, AbstractDataLoader]:
    """The test loader ``loader`` as one loader per :data:`TARGET_GROUPS` entry: the rows whose target item is
    warm, and those whose target is cold (``cold_items``: ``BoolTensor[n_items]``), each as a loader of its class."""
    dataset = loader._dataset
    cold = cold_items[dataset.inter_feat[dataset.iid_field]]
    return {name: type(loader)(loader.config, dataset.copy(dataset.inter_feat[rows]), loader._sampler, shuffle=False)
            for name, rows in zip(TARGET_GROUPS, (~cold, cold))}
