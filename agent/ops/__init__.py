"""Operations: logging, metrics and health, sd_notify."""
