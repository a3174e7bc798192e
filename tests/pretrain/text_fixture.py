"""Synthetic movies (ml-latest layout) and book titles for the SimCSE tests.

Each movie's title and tags are drawn from words of its first genre, so the text carries the genre
even without the genre list, as real titles partly do.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import polars as pl

WORDS = {
    "Sci-Fi": ["space", "robot", "alien", "galaxy", "star", "planet", "laser", "cyborg"],
    "Romance": ["love", "heart", "kiss", "wedding", "summer", "letters", "paris", "darling"],
    "Horror": ["blood", "ghost", "night", "dead", "scream", "grave", "curse", "shadow"],
    "Comedy": ["crazy", "party", "silly", "dude", "vacation", "goofy", "prank", "funny"],
    "Western": ["gun", "cowboy", "ranch", "desert", "sheriff", "outlaw", "saloon", "horse"],
}
GENRES = list(WORDS)


def synthetic_movies(n: int = 120, seed: int = 0) -> pl.DataFrame:
    """Item table like ``ClickLog.items``: item_id, title, genres (List), tags (List); every 10th has no tags."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        g = [GENRES[i % len(GENRES)]]
        if i % 3 == 0:
            g.append(GENRES[(i + 2) % len(GENRES)])
        words = rng.choice(WORDS[g[0]], size=2, replace=False)
        title = f"{words[0].title()} {words[1].title()} ({1950 + i % 60})"
        tags = [] if i % 10 == 0 else sorted(set(rng.choice(WORDS[g[0]], size=2).tolist()))
        rows.append({"item_id": i + 1, "title": title, "genres": g, "tags": tags})
    return pl.DataFrame(rows, schema={"item_id": pl.Int64, "title": pl.String,
                                      "genres": pl.List(pl.String), "tags": pl.List(pl.String)})


def write_fake_movielens(folder: Path, n: int = 120, seed: int = 0) -> Path:
    """movies.csv, ratings.csv and tags.csv of ``synthetic_movies(n)`` in ml-latest-small's format."""
    folder.mkdir(parents=True, exist_ok=True)
    movies = synthetic_movies(n, seed)
    with open(folder / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for r in movies.iter_rows(named=True):
            w.writerow([r["item_id"], r["title"], "|".join(r["genres"])])
    with open(folder / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for i in range(n):
            w.writerow([1 + i % 7, i + 1, 4.0, 1_000_000 + i])
    with open(folder / "tags.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "tag", "timestamp"])
        for r in movies.iter_rows(named=True):
            for t in r["tags"]:
                w.writerow([1, r["item_id"], t, 1_000_000])
    return folder


def write_fake_books(path: Path, n: int = 40) -> Path:
    """A goodbooks-10k-like books.csv (book_id, authors, original_publication_year, title)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    words = [w for ws in WORDS.values() for w in ws]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["book_id", "authors", "original_publication_year", "title"])
        for i in range(n):
            w.writerow([i + 1, f"Author {i % 9}", f"{1900 + i}.0", f"The {words[i % len(words)].title()} Book"])
    return path
