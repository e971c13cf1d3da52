"""An example integration: a web shop's customers into TillPoint, a (fictional) POS."""
