"""The bundled MovieLens ml-latest-small (GroupLens; see ml-latest-small/README.txt for its licence).

100,004 ratings by 671 users on 9,125 catalogued movies (9,066 rated), 1995-2016. A rating
>= 3.5 is a positive (``label``), >= 4.5 a ``like``. Item text is ``title``, ``genres`` and the
movie's user ``tags``; ``year`` (from the title) is kept as a numeric column.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pandas as pd

from semrec.data.dataset import RecDataset
from semrec.data.generic import (check_item_references, normalize_interactions, normalize_items,
                                 read_table)

MOVIELENS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ml-latest-small")


def load_movielens(path: Optional[str] = None, positive_threshold: float = 3.5,
                   like_threshold: float = 4.5) -> RecDataset:
  """Loads ml-latest-small from ``path`` (default: the copy shipped inside semrec)."""
  path = path or MOVIELENS_DIR
  ratings_path = os.path.join(path, "ratings.csv")
  movies_path = os.path.join(path, "movies.csv")
  ratings = read_table(ratings_path).rename(columns={"userId": "user_id", "movieId": "item_id"})
  inter = normalize_interactions(ratings, ratings_path, positive_threshold, like_threshold)

  movies = read_table(movies_path).rename(columns={"movieId": "item_id"})
  movies["genres"] = movies["genres"].astype(str).str.replace("(no genres listed)", "", regex=False)
  movies["genres"] = movies["genres"].str.replace("|", ", ", regex=False)
  year = movies["title"].astype(str).str.extract(r"\((\d{4})\)\s*$")[0]
  movies["year"] = pd.to_numeric(year, errors="coerce").astype(np.float32)

  tags_path = os.path.join(path, "tags.csv")
  if os.path.exists(tags_path):
    tags = read_table(tags_path).rename(columns={"movieId": "item_id"})
    tags["tag"] = tags["tag"].astype(str).str.strip()
    agg = tags.groupby("item_id")["tag"].apply(lambda t: ", ".join(dict.fromkeys(x for x in t if x)))
    movies["tags"] = movies["item_id"].astype(str).map(agg).fillna("")
  else:
    movies["tags"] = ""

  links_path = os.path.join(path, "links.csv")
  if os.path.exists(links_path):  # ships without a header row
    links = pd.read_csv(links_path, header=None, names=["item_id", "imdb_id", "tmdb_id"], dtype=str,
                        keep_default_na=False)
    movies = movies.merge(links, on="item_id", how="left")
    movies[["imdb_id", "tmdb_id"]] = movies[["imdb_id", "tmdb_id"]].fillna("")

  items = normalize_items(movies, movies_path, ("title", "genres", "tags"), ())
  check_item_references(ratings, items, ratings_path)
  return RecDataset(name="movielens", interactions=inter, items=items,
                    text_columns=("title", "genres", "tags"), quality_columns=()).validate()
