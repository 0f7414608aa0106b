// Pure Kotlin/JVM library: no Android dependency, so its tests run anywhere (also without Gradle, with
// android_demo/scripts/test-core.sh and Debian's kotlinc). The sources keep to Kotlin 1.3 syntax for that script.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

java {
    sourceCompatibility = JavaVersion.VERSION_1_8
    targetCompatibility = JavaVersion.VERSION_1_8
}

tasks.withType<org.jetbrains.kotlin.gradle.tasks.KotlinCompile>().configureEach {
    kotlinOptions.jvmTarget = "1.8"
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The conformance vectors live in src/test/resources/vectors (on the test classpath); the tests also accept
    // -Dvectors.dir.
    systemProperty("vectors.dir", file("src/test/resources/vectors").absolutePath)
}
