"""The MicroPie compatibility contract, feature by feature."""
