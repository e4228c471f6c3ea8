"""numbers-etl: an exact SQL history of the phone numbers that Bird offers for sale."""

__version__ = "0.1.0"
