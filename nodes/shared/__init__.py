"""What every node's HTTP application shares: request reading, responses and error mapping, metrics."""
