//! Genomes to promoters: reading GFF3 and indexed FASTA, extracting promoter windows.

pub mod bgzf;
pub mod fasta;
pub mod genes;
pub mod gff;
pub mod gtf;
pub mod huffman;
pub mod io;
pub mod promoters;
pub mod records;
pub mod rewrap;
pub mod seq;
pub mod window;
