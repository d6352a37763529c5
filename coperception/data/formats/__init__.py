"""data/formats"""
