fn main() { println!("{:?}", ttsd::mlx_info::smoke()); }
