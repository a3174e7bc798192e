"""The one error type for bad input data."""


class DataError(ValueError):
    """Input data does not meet its contract.

    Messages say which file and column, how many rows are affected, show an example, and say how
    to fix it, e.g.::

        ratings.csv: column 'timestamp' has 3 null values out of 100836 rows (first at line 17: userId='4',
        movieId='10', rating='4.0', timestamp=None); drop or fill those rows before loading
    """
